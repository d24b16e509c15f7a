"""The precompute per view against the bare inference forward over the same inputs, side by side
(issue 26's aim: <= 1.15x for both kinds of data source).

    python bench/precompute.py [--data-dir ../shared/data] [--images 3000] [--reps 3] [--threads 1]
                               [--workdir /tmp/kd_accel_bench_precompute] [--json bench/results/precompute.json]
    python bench/precompute.py --profile folder      (one precompute of a case under cProfile: where the time goes)

Cases, each a pair run in this one process, the two sides alternated rep by rep after a warm-up
of each:

- memory / memory-shift: MNIST's training set held in memory (--limit rows, default all 60,000)
  and the notebook teacher (random weights: the arithmetic is a trained one's), one view, clean
  and --augment shift. precompute: teaching.precompute_views, the cache written (rows by sample
  index through cache.CacheWriter, checksums, rename). bare: the same loader (the source's
  inference_loader, the same view's parameters applied on the device) and the same input function,
  the teacher's forward under inference_mode, nothing kept.
- folder: --images PNGs (synthetic, each side drawn in 64-128 px, RGB, 10 classes, written once
  into --workdir and reused) and torchvision:resnet18 at 64 px (random weights, channels-last),
  one RandomResizedCrop view, --workers DataLoader workers (default 1). bare: the same loader
  (decoding, crops, digests in the workers) and input function, forward only, nothing written.

A diagnostic third side, `decoded`: the teacher's forward alone over the same view's batches
decoded beforehand and held in memory (no loader, no workers): what the loader adds to the bare
forward, shown beside the aim's ratio (for an in-memory set the loader is a gather).

Both sides run the teacher channels-last at --threads main-process threads (default 1), in
batches of evaluation.inference_batch (the precompute's). The ratio of a case is the median of
the per-rep ratios precompute / bare; the machine line (bench/machine.py) heads the table, and
the JSON (--json) holds every rep.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import describe, machine_info  # noqa: E402

MARKER = ".bench_precompute.json"
AIM = 1.15


def png_folder(workdir: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """DIR/train/c<k>/<i>.png: n PNGs, each side drawn in [64, 128], a smooth random colour field
    plus mild noise; written once (a marker records how) and reused. DIR/val holds the classes'
    folders, empty (the precompute reads the training split only)."""
    from PIL import Image

    root = workdir / f"png{n}"
    made = {"images": n, "classes": classes, "seed": seed, "sides": [64, 128]}
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == made:
        return root
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        h, w = (int(s) for s in torch.randint(64, 129, (2,), generator=g))
        low = torch.rand(1, 3, 6, 6, generator=g)
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
        img = (img + 0.05 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img * 255).round().to(torch.uint8)[0].permute(1, 2, 0)  # [H, W, 3]
        Image.fromarray(pixels.numpy()).save(folder / f"{i:06d}.png", format="PNG")
    for c in range(classes):
        (root / "val" / f"c{c}").mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(made))
    return root


class Case:
    """One data source and teacher: `precompute()` writes one view's cache, `bare()` runs the
    teacher over the same loader and inputs, nothing written."""

    def __init__(self, name, accelerator, cfg, train, model, spec, out):
        from kd_accel.augment import DrawnViews, stream_seed
        from kd_accel.models import state_fingerprint
        from kd_accel.models.preprocessing import describe as describe_prep
        from kd_accel.roles import TeacherId, inputs_for
        from kd_accel.teaching import cache_key

        self.name, self.accelerator, self.cfg, self.train, self.model, self.spec, self.out = \
            name, accelerator, cfg, train, model, spec, out
        self.key = cache_key(train, TeacherId(state_fingerprint(model.state_dict()), describe_prep(model.preprocessing)),
                             spec, cfg.kd.augment_seed)
        self.inputs = inputs_for(spec, model.preprocessing)
        self.plan = DrawnViews(spec, stream_seed("cache", cfg.kd.augment_seed)) if spec.name != "none" else None
        self.split = train.at(model.preprocessing)

    def precompute(self):
        from kd_accel.teaching import precompute_views

        self.out.unlink(missing_ok=True)
        precompute_views(self.accelerator, self.cfg, self.model, self.train, self.out, self.key, self.spec, 1, "fp16")

    def loader(self):
        from kd_accel.evaluation import inference_batch

        return self.split.inference_loader(self.accelerator, inference_batch(self.accelerator.device), self.plan, 0)

    @torch.inference_mode()
    def bare(self):
        for batch in self.loader():
            self.model(self.inputs(batch))

    @torch.inference_mode()
    def decoded(self):
        if not hasattr(self, "batches"):  # made once, outside the timing
            self.batches = [{k: v for k, v in b.items() if isinstance(v, torch.Tensor)} for b in self.loader()]
            return
        for batch in self.batches:
            self.model(self.inputs(batch))


def quiet_print(accelerator):
    accelerator.print = lambda *a, **k: None  # the precompute's "cache: wrote" line, once per rep


def make_cases(a, only):
    from kd_accel.augment import get_spec
    from kd_accel.config import from_flags
    from kd_accel.data import load_folder, load_split
    from kd_accel.models import build_model
    from kd_accel.models.preprocessing import of_data
    from kd_accel.pipeline import make_accelerator
    from kd_accel.roles import build

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cases = []
    if {"memory", "memory-shift"} & only:
        for name, aug in (("memory", "none"), ("memory-shift", "shift")):
            if name not in only:
                continue
            cfg = from_flags(augment=aug)
            accelerator = make_accelerator(cfg, say_threads=False)
            torch.set_num_threads(a.threads)
            quiet_print(accelerator)
            train = load_split("mnist", "train", a.data_dir).subset(a.limit)
            torch.manual_seed(0)
            model = build_model("teacher", train.num_classes, train.input_shape)
            model.preprocessing = of_data(train.norm, train.input_shape[1:])
            model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
            cases.append(Case(name, accelerator, cfg, train, model, get_spec(aug), workdir / f"{name}.safetensors"))
    if "folder" in only:
        root = png_folder(workdir, a.images)
        cfg = from_flags(dataset="imagefolder", augment="rrc", teacher_arch="torchvision:resnet18",
                         teacher_image_size=64, num_workers=a.workers)
        accelerator = make_accelerator(cfg, say_threads=False)
        torch.set_num_threads(a.threads)
        quiet_print(accelerator)
        train = load_folder(str(root), "train", channels=3, workers=a.workers)
        torch.manual_seed(0)
        model, record = build(cfg.teacher, train, "teacher", lambda line: None)
        model.preprocessing = record["preprocessing"]
        model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        cases.append(Case("folder", accelerator, cfg, train, model, get_spec("rrc"), workdir / "folder.safetensors"))
    return cases


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--limit", type=int, default=None, help="MNIST rows of the memory cases (default all 60,000)")
    p.add_argument("--images", type=int, default=3000, help="PNG files of the folder case")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the folder case")
    p.add_argument("--threads", type=int, default=1, help="main-process torch threads")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cases", default="memory,memory-shift,folder")
    p.add_argument("--workdir", default="/tmp/kd_accel_bench_precompute")
    p.add_argument("--json", default=None)
    p.add_argument("--profile", default=None, help="a case name: one precompute of it under cProfile, then stop")
    a = p.parse_args(argv)
    only = set((a.profile or a.cases).split(","))
    cases = make_cases(a, only)
    info = machine_info()
    print(describe(info), flush=True)
    if a.profile:
        case = cases[0]
        case.precompute()  # warm-up
        prof = cProfile.Profile()
        prof.runcall(case.precompute)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    result = {"machine": info, "commit": commit(), "threads": a.threads, "workers": a.workers, "images": a.images,
              "limit": a.limit, "aim": AIM, "cases": {}}
    for case in cases:  # warm-up: the first forward, the first worker start, the page cache
        case.bare()
        case.precompute()
        case.decoded()
    for rep in range(a.reps):
        for case in cases:
            sides = [("bare", case.bare), ("precompute", case.precompute), ("decoded", case.decoded)]
            if rep % 2:
                sides.reverse()
            got = {side: timed(fn) for side, fn in sides}
            result["cases"].setdefault(case.name, []).append(got)
            print(f"rep {rep + 1}: {case.name}: precompute {got['precompute']:.2f} s, bare forward {got['bare']:.2f} s "
                  f"({got['precompute'] / got['bare']:.3f}x), forward on decoded batches {got['decoded']:.2f} s",
                  flush=True)
    print(f"\n{describe(info)}\ncommit {result['commit']}, {a.threads} main thread(s), {a.workers} worker(s) for the folder\n")
    print("| case | precompute per view (median s) | bare forward (median s) | ratio (median of reps) | aim "
          "| forward on decoded batches (median s) | precompute / that |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for name, reps in result["cases"].items():
        pre, bare, dec = (statistics.median(r[s] for r in reps) for s in ("precompute", "bare", "decoded"))
        ratio = statistics.median(r["precompute"] / r["bare"] for r in reps)
        vs_decoded = statistics.median(r["precompute"] / r["decoded"] for r in reps)
        summary[name] = {"precompute_s": pre, "bare_s": bare, "ratio": ratio, "met": ratio <= AIM, "decoded_s": dec,
                         "precompute_over_decoded": vs_decoded}
        print(f"| {name} | {pre:.2f} | {bare:.2f} | {ratio:.3f}x | <= {AIM}: {'met' if ratio <= AIM else 'missed'} "
              f"| {dec:.2f} | {vs_decoded:.3f}x |")
    result["summary"] = summary
    result["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
