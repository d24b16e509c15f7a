"""Where the students' soft targets come from: the teacher-logits cache (one clean view, or K
augmented views replayed exactly for the student), or the frozen teacher run online.

teacher checkpoint -> precompute (per view, resumable, exact under any number of processes) ->
cache file (cache.py: stamped, checksummed) -> resolve_cache (validated, or recomputed when it is
the run folder's own and stale) -> cache.SoftTargets for the training loop.
"""
import time
from pathlib import Path

import torch

from .augment import SPECS, draw_params, get_spec, stream_seed
from .cache import DTYPES, CacheKey, CacheMismatch, check_topk, load_cache, load_part, remove_parts, save_cache, save_part
from .errors import KDError
from .cache_stream import CacheWriter
from .data import FolderSplit
from .data.streamed import CentreCrop, DrawnCrops
from .evaluation import inference_batch, predict_logits, predict_rows
from .models import load_model, state_fingerprint
from .models.preprocessing import describe, of_data
from .roles import TeacherId, file_preprocessing, inputs_for

CACHE_FILE = "teacher_logits.safetensors"
# Called as hook(view) after each view of a precompute is computed and saved (the tests
# interrupt a precompute here to check that it resumes at the next view).
VIEW_HOOKS = []


def cache_views(cfg):
    """(augmentation spec, K) of the cache this run's students read: K augmented views in
    'cache' mode with augmentation (K = --views, default one per epoch), else one clean view."""
    spec = get_spec(cfg.student.augment)
    if cfg.kd.teacher_mode == "cache" and spec.name != "none":
        return spec, cfg.kd.views or cfg.student.epochs
    return SPECS["none"], 1


def ignored_cache_settings(cfg):
    """{setting: one line} for the cache settings this run would otherwise ignore in silence:
    K views without augmentation or outside mode 'cache' (which reads K views; 'fixed' reads one
    clean view), and top-k or a storage dtype in mode 'online' (which reads no cache)."""
    k, mode, lines = cfg.kd, cfg.kd.teacher_mode, {}
    if k.views and cfg.student.augment == "none":
        lines["views"] = f"--views {k.views} needs --augment: the views of an un-augmented image are all the same"
    elif k.views and mode != "cache":
        reads = "one clean view" if mode == "fixed" else "no cache"
        lines["views"] = f"--views {k.views} is the K of --teacher-mode cache; --teacher-mode {mode} reads {reads}"
    if mode == "online":
        for name in ("cache_topk", "cache_dtype"):
            if getattr(k, name) is not None:
                flag = "--" + name.replace("_", "-")
                lines[name] = f"{flag} {getattr(k, name)} shapes a cache; --teacher-mode online reads none"
    return lines


def cache_path(cfg):
    """--logits, else the run folder's cache for this augmentation, K and storage, so that the
    clean-view cache and each K-view or top-k cache of a study live side by side instead of
    replacing each other."""
    if cfg.run.logits:
        return Path(cfg.run.logits)
    spec, views = cache_views(cfg)
    parts = ([] if spec.name == "none" else [spec.name, f"{views}views"]) + \
        ([f"top{cfg.kd.cache_topk}"] if cfg.kd.cache_topk else [])
    return cfg.run_dir / ".".join(["teacher_logits", *parts, "safetensors"])


def default_cache_dtype(spec):
    """fp32 for the one clean view (small, exact); fp16 for K views (K times the size)."""
    return "fp32" if spec.name == "none" else "fp16"


def cache_dtype(cfg, spec):
    return cfg.kd.cache_dtype or default_cache_dtype(spec)


def cache_key(train, teacher, spec=SPECS["none"], augment_seed=0):
    """What a cache must be made from. teacher: roles.TeacherId (weights and the input the
    teacher sees), or its weights' fingerprint for a teacher that takes the data as they are."""
    teacher_input = teacher.input if isinstance(teacher, TeacherId) else describe(of_data(train.norm, train.input_shape[1:]))
    return CacheKey(train.dataset, train.split, len(train), train.num_classes, getattr(teacher, "weights", teacher),
                    train.fingerprint(), spec.describe(), augment_seed if spec.name != "none" else 0, teacher_input)


def frozen_teacher(accelerator, cfg, teacher_path, train):
    """The teacher for inference: on the device, eval mode, no gradients, never wrapped for DDP;
    model.preprocessing says what input it expects (roles.inputs_for)."""
    model, meta = load_model(teacher_path, "teacher", train.input_shape)
    model.preprocessing = file_preprocessing(meta, teacher_path, train)
    model.to(accelerator.device).requires_grad_(False).eval()
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _finished_views(accelerator, out_path, key, dtype, views):
    """{view: (logits, params)} of the views an interrupted precompute already saved (read on the
    main process; a stale or damaged part is deleted there and recomputed), and on every rank
    the list of their indices."""
    done = {}
    if views > 1 and accelerator.is_main_process:
        for v in range(views):
            part = load_part(out_path, v, key, dtype)
            if part is not None:
                done[v] = part
    indices = [sorted(done)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(indices)
    return done, set(indices[0])


def precompute(accelerator, cfg, teacher_path, train, out_path):
    """Run the frozen teacher over the training set and write the cache atomically: one clean
    view, or K augmented views (cache_views) each from its own counter-based parameters. Each
    finished view of a K-view precompute is saved as a part first, so a killed precompute
    resumes at the first missing view; the parts go once the cache is written."""
    if cfg.kd.cache_topk is not None:  # before K teacher passes, not after them
        check_topk(cfg.kd.cache_topk, train.num_classes)
    model = frozen_teacher(accelerator, cfg, teacher_path, train)
    spec, views = cache_views(cfg)
    dtype = cache_dtype(cfg, spec)
    teacher = TeacherId(state_fingerprint(model.state_dict()), describe(model.preprocessing))
    key = cache_key(train, teacher, spec, cfg.kd.augment_seed)
    if isinstance(train, FolderSplit):
        return precompute_streamed(accelerator, cfg, model, train, out_path, key, spec, views, dtype)
    # the teacher's own version of each view: its size and normalisation (models/preprocessing.py)
    stream, index, inputs = stream_seed("cache", cfg.kd.augment_seed), torch.arange(len(train)), \
        inputs_for(spec, model.preprocessing)
    start = time.perf_counter()
    done, done_views = _finished_views(accelerator, out_path, key, dtype, views)
    if done_views:
        accelerator.print(f"cache: {len(done_views)} of {views} views kept from an interrupted precompute")
    logits, params = [], []
    for v in range(views):
        if v in done_views:
            if accelerator.is_main_process:
                logits.append(done[v][0])
                params.append(done[v][1])
            continue
        p = draw_params(spec, stream, v, index) if spec.name != "none" else None
        lv = predict_logits(accelerator, model, train, inputs=inputs, extra=p is not None and {"aug_params": p} or None,
                            desc=f"teacher logits, view {v + 1}/{views}" if views > 1 else "teacher logits")
        # a NaN cache would fail every later student with "non-finite loss", blaming the student
        bad = int((~torch.isfinite(lv)).any(dim=1).sum())
        if bad:
            raise KDError(f"teacher {teacher_path} gives non-finite logits for {bad} of {len(train)} training samples"
                          f"{f' (view {v})' if views > 1 else ''}; no cache written")
        if accelerator.is_main_process:
            # rounded as the parts store it, so a resumed precompute writes the same cache
            logits.append(lv.to(DTYPES[dtype]).float())
            params.append(p)
            if views > 1:
                save_part(out_path, v, lv, p, key, dtype)
        accelerator.wait_for_everyone()
        for hook in VIEW_HOOKS:
            hook(v)
    if accelerator.is_main_process:
        save_cache(out_path, torch.stack(logits), train.labels, key, dtype,
                   params=torch.stack(params) if spec.name != "none" else None, topk=cfg.kd.cache_topk)
        remove_parts(out_path)
    accelerator.wait_for_everyone()
    _wrote(accelerator, cfg, out_path, train, spec, views, dtype, start)


def _wrote(accelerator, cfg, out_path, train, spec, views, dtype, start):
    what = f"{views} views ({spec.describe()})" if views > 1 or spec.name != "none" else "1 view"
    storage = f"top-{cfg.kd.cache_topk}" if cfg.kd.cache_topk else "full"
    accelerator.print(f"cache: wrote {out_path} ({len(train)} x {train.num_classes}, {what}, {dtype}, {storage}) "
                      f"in {time.perf_counter() - start:.1f}s")


def precompute_streamed(accelerator, cfg, model, train, out_path, key, spec, views, dtype):
    """An image folder's precompute: per view, the folder streamed through the workers (each
    rank its shard), the crops drawn there from (augment seed, view, index) at the teacher's
    size, and the rows written by sample index into the cache file (cache_stream.CacheWriter):
    no [N, C] in memory. A killed precompute resumes at the first unfinished view."""
    split, start = train.at(model.preprocessing), time.perf_counter()
    inputs = inputs_for(SPECS["none"], model.preprocessing)  # the workers made the crop at the teacher's size
    writer = CacheWriter(out_path, key, views, train.labels, dtype, cfg.kd.cache_topk, params_cols=5 if
                         spec.name != "none" else None, file_hashes=train.file_hashes(),
                         classes=train.index.classes, paths=train.index.paths) if accelerator.is_main_process else None
    done = [sorted(writer.done) if writer else []]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(done)
    if done[0]:
        accelerator.print(f"cache: {len(done[0])} of {views} views kept from an interrupted precompute")
    stream = stream_seed("cache", cfg.kd.augment_seed)
    for v in range(views):
        if v in done[0]:
            continue
        crops = DrawnCrops(stream, view=v) if spec.name != "none" else CentreCrop()
        loader = split.inference_loader(accelerator, inference_batch(accelerator.device), crops)
        bad = torch.zeros((), dtype=torch.long, device=accelerator.device)

        def write(idx, logits, digests, *crops):
            nonlocal bad
            finite = torch.isfinite(logits).all(dim=1)
            bad += (~finite).sum()
            if writer is not None:
                writer.write(v, idx, logits, crops[0] if crops else None, digests)

        try:
            # each file's digest (data/content.py) rides along: the cache records the bytes it was made from
            predict_rows(accelerator, model, loader, len(split), inputs, write,
                         extra=("digests", "crops") if spec.name != "none" else ("digests",),
                         desc=f"teacher logits, view {v + 1}/{views}" if views > 1 else "teacher logits")
        except KDError:
            if not int(bad):  # the cache's own check (e.g. beyond fp16's range)
                raise
        if int(bad):
            raise KDError(f"teacher {cfg.run.teacher or 'checkpoint'} gives non-finite logits for {int(bad)} of "
                          f"{len(train)} training samples{f' (view {v})' if views > 1 else ''}; no cache written")
        if writer is not None:
            writer.view_done(v)
        accelerator.wait_for_everyone()
        for hook in VIEW_HOOKS:
            hook(v)
    if writer is not None:
        writer.finish()
    accelerator.wait_for_everyone()
    _wrote(accelerator, cfg, out_path, train, spec, views, dtype, start)


def resolve_cache(accelerator, cfg, teacher_path, teacher_id, train):
    """Validated soft targets (cache.SoftTargets) for this teacher, data and augmentation.
    Returns (soft, hit, path).

    An explicit --logits file that does not match is refused; the run folder's own stale cache
    is replaced (and the reason printed)."""
    path = cache_path(cfg)
    spec, views = cache_views(cfg)
    key = cache_key(train, teacher_id, spec, cfg.kd.augment_seed)
    if path.is_dir():
        raise KDError(f"logits cache {path} is a directory, not a file: remove or rename it")
    if path.exists():
        try:
            soft = load_cache(path, key, views=views, data=train)
            # what the run asks to be stored: full logits are not a top-k run's soft targets, nor
            # fp32 an fp16 run's (the key stamps what produced the logits, not how they are kept)
            want = {"storage": f"top{cfg.kd.cache_topk}" if cfg.kd.cache_topk else "full",
                    "dtype": cache_dtype(cfg, spec)}
            diffs = [f"{name} differs ({name}: cache {getattr(soft, name)!r}, run {value!r})"
                     for name, value in want.items() if getattr(soft, name) != value]
            if diffs:
                raise CacheMismatch(f"stale logits cache {path}: " + "; ".join(diffs))
            train.expect_content(soft)  # a cache made from other bytes of the folder's files: refused
            accelerator.print(f"cache: hit {path} (no teacher forward pass)")
            return soft, True, path
        except KDError as e:
            if cfg.run.logits:
                raise
            accelerator.print(f"cache: refusing {e}; recomputing")
    else:
        accelerator.print(f"cache: miss, {path} does not exist; precomputing teacher logits")
    precompute(accelerator, cfg, teacher_path, train, path)
    soft = load_cache(path, key, views=views, data=train)
    train.expect_content(soft)
    return soft, False, path


def resolve_soft_targets(accelerator, cfg, teacher_path, teacher_id, train):
    """Where the distilled students' soft targets come from: (soft, online, info). The cache
    (modes cache and fixed: cache.SoftTargets, validated or precomputed) or, in online mode, the
    frozen teacher itself, run on every batch. `info` is what metrics.json records."""
    if cfg.kd.teacher_mode == "online":
        accelerator.print("teacher: online, run on every student batch (no cache)")
        return None, frozen_teacher(accelerator, cfg, teacher_path, train), {"mode": "online"}
    soft, hit, path = resolve_cache(accelerator, cfg, teacher_path, teacher_id, train)
    # views: the K the students replay (the first K of the file's); cache_views: what the file holds
    return soft, None, {"mode": cfg.kd.teacher_mode, "hit": hit, "path": str(path), "dtype": soft.meta.get("dtype"),
                        "views": cache_views(cfg)[1], "cache_views": soft.views, "storage": soft.storage}
