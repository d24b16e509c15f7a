"""Function matching from a cache, image folders (issue 27, item 3): the DataLoader workers'
images/s when a student replays mixup views (each sample's crop and its partner's, decoded by the
workers, mixed on the device) against crops alone, both read from a one-view cache.

    python bench/mix_folder.py [--workdir /tmp/kd_accel_bench_folder] [--reps 5] [--json OUT]

The folder is bench/folder.py's synthetic JPEGs (--images files, sides in --sides, RGB, decoded as
grey at 28x28 for the notebook's models, as its kd_vs_ce case). Two caches of one view are
written by teaching.precompute_views with the notebook teacher (random weights): RandomResizedCrop
+ flip, and the same crops + mixup. Each side is then one training epoch's loader, as fit reads it
(FolderData: the workers decode and crop, the cache's logits gathered per batch), iterated to the
end; "+ inputs" also builds each batch's model input in this process (augment.make_inputs: the
mixing itself, on the CPU here). One warm-up epoch each, then the sides alternated rep by rep; the
ratio is the median of the per-rep ratios (mixup / crops: >= 0.8 is the issue's aim).

The epoch keeps each pair of partners in one batch (loading.pair_order), so the workers decode
every image once; `partner decodes` counts the partners a batch lacked (an odd batch or N).
--no-pairs (a diagnostic) shuffles the mixup side's samples alone, as without that order: each
batch's partners are then decoded a second time.
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from folder import jpeg_folder, notebook_prep, setup_fit  # noqa: E402
from machine import describe, machine_info  # noqa: E402


def make_cache(accelerator, cfg, split, path, spec):
    """A one-view cache of `spec` by the notebook teacher (random weights). Returns SoftTargets."""
    from kd_accel.cache import open_cache
    from kd_accel.models import state_fingerprint
    from kd_accel.models.notebook import Teacher
    from kd_accel.models.preprocessing import describe as describe_prep
    from kd_accel.roles import TeacherId
    from kd_accel.teaching import cache_key, precompute_views

    prep = notebook_prep(split.view.size[0])
    torch.manual_seed(0)
    teacher = Teacher(split.num_classes, split.channels, split.view.size)
    teacher.preprocessing = prep
    teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    key = cache_key(split, TeacherId(state_fingerprint(teacher.state_dict()), describe_prep(prep)), spec, 0)
    Path(path).unlink(missing_ok=True)
    precompute_views(accelerator, cfg, teacher, split, Path(path), key, spec, 1, "fp16")
    return open_cache(path, key)


def epoch(data, loader, e, inputs=None):
    """(seconds, images, partner decodes) of one epoch of `loader`."""
    data.set_epoch(e)
    loader.sampler.set_epoch(e)
    start, images, extra = time.perf_counter(), 0, 0
    for batch in loader:
        batch = data.complete(batch)
        if inputs is not None:
            inputs(batch)
        images += len(batch["idx"])
        extra += len(batch.get("partner_images", ()))
    return time.perf_counter() - start, images, extra


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/kd_accel_bench_folder")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--sides", type=int, nargs=2, default=[64, 160])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--no-pairs", action="store_true", help="a diagnostic: the epoch order without pairs")
    a = p.parse_args(argv)

    from kd_accel.augment import CachedViews, get_spec, make_inputs
    from kd_accel.data.mixing import MixSpec

    folder, _ = jpeg_folder(a.workdir, a.images, 10, *a.sides)
    cfg, accelerator, split = setup_fit(folder, a.batch, a.workers, 1)
    crops_spec = get_spec("rrc")
    mix_spec = replace(crops_spec, mix=MixSpec("mixup"))
    work = Path(a.workdir)
    sides = {}
    for name, spec in (("crops", crops_spec), ("mixup", mix_spec)):
        soft = make_cache(accelerator, cfg, split, work / f"mix_bench.{name}.safetensors", spec)
        data = split.train_data(CachedViews(soft, 1))
        data.pairs = None if a.no_pairs else data.pairs
        sides[name] = (data, data.loader(accelerator, a.batch, 0))
    inputs = make_inputs(crops_spec)
    cases = [(name, plus) for plus in (False, True) for name in sides]
    out = {"machine": machine_info(), "pairs": not a.no_pairs, "images": a.images, "sides": a.sides, "batch": a.batch, "workers": a.workers,
           "input": "1x28x28 grey", "seconds": {}, "partner_decodes": {}}
    for name, plus in cases:  # warm-up: workers started, page cache
        data, loader = sides[name]
        epoch(data, loader, 0, inputs if plus else None)
    for rep in range(a.reps):
        for name, plus in (cases if rep % 2 == 0 else cases[::-1]):
            data, loader = sides[name]
            seconds, n, extra = epoch(data, loader, rep + 1, inputs if plus else None)
            label = name + (" + inputs" if plus else "")
            out["seconds"].setdefault(label, []).append(seconds)
            out["partner_decodes"][label] = out["partner_decodes"].get(label, 0) + extra
    rows = []
    for plus in ("", " + inputs"):
        ratios = [c / m for c, m in zip(out["seconds"]["crops" + plus], out["seconds"]["mixup" + plus])]
        out[f"ratio{plus}"] = statistics.median(ratios)
        for name in ("crops", "mixup"):
            s = statistics.median(out["seconds"][name + plus])
            rows.append(f"| {name}{plus} | {a.images / s:,.0f} | {s:.2f} | {out['partner_decodes'][name + plus]} |")
        rows.append(f"| mixup / crops{plus} | {out[f'ratio{plus}']:.2f}x | | |")
    out["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(describe(out["machine"]))
    print(f"{a.images} JPEGs ({a.sides[0]}-{a.sides[1]} px), batch {a.batch}, {a.workers} workers, {a.reps} reps"
          f"{', no pair order' if a.no_pairs else ''}")
    print("| side | images/s (median) | s / epoch | partner decodes |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    if a.json:
        from kd_accel.io import write_json

        write_json(Path(a.json), out)


if __name__ == "__main__":
    main()
