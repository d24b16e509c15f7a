"""Where the students' soft targets come from: the teacher-logits cache (one clean view, or K
augmented views replayed exactly for the student), or the frozen teacher run online.

teacher checkpoint -> precompute (per view, resumable, exact under any number of processes) ->
cache file (cache.py: stamped, checksummed) -> resolve_cache (validated, or recomputed when it is
the run folder's own and stale) -> cache.SoftTargets for the training loop.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .augment import SPECS, DrawnViews, recipe_spec, stream_seed
from .cache import DTYPES, CacheKey, CacheMismatch, CacheWriter, check_topk, open_cache
from .config import Recipe
from .data.mixing import MIX_COLUMNS
from .errors import KDError
from .evaluation import inference_batch, predict_rows
from .models import load_model, state_fingerprint
from .models.preprocessing import describe, of_data
from .roles import TeacherId, file_preprocessing, inputs_for
from .soft_targets import check_serves
from .training import HOOKS

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .augment import AugmentSpec
    from .cache import SoftTargets
    from .config import Config
    from .data import DataSource

CACHE_FILE = "teacher_logits.safetensors"


def cache_views(cfg: Config) -> tuple[AugmentSpec, int]:
    """(augmentation spec, K) of the cache this run's students read: K augmented (or mixed: the
    spec's mix) views in 'cache' mode with augmentation or a mix (K = --views, default one per
    epoch), else one clean view."""
    spec = recipe_spec(cfg.student)
    if cfg.kd.teacher_mode == "cache" and spec.varies:
        return spec, cfg.kd.views or cfg.student.epochs
    return SPECS["none"], 1


def ignored_cache_settings(cfg: Config) -> dict[str, str]:
    """{setting: one line} for the cache settings this run would otherwise ignore in silence:
    K views without augmentation or outside mode 'cache' (which reads K views; 'fixed' reads one
    clean view), and top-k or a storage dtype in mode 'online' (which reads no cache); and the
    mix settings that would do nothing (mixed_settings)."""
    k, mode, lines = cfg.kd, cfg.kd.teacher_mode, mixed_settings(cfg)
    if k.views and cfg.student.augment == "none" and cfg.student.mix == "none":
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


def mixed_settings(cfg: Config) -> dict[str, str]:
    """{setting: one line} for mix settings that would do nothing or cannot be honoured: an alpha
    or unmixed labels without a mix; the teacher's labels unmixed (it learns from its labels
    alone: they stay mixed, as the baseline's); a mix with --train-subset (a subset's sample
    would mix with a partner outside it)."""
    lines = {}
    for flag, recipe in (("--mix", cfg.student), ("--teacher-mix", cfg.teacher)):
        if recipe.mix == "none" and recipe.mix_alpha != Recipe.mix_alpha:
            lines[flag[2:].replace("-", "_") + "_alpha"] = (f"{flag}-alpha {recipe.mix_alpha:g} is the alpha of "
                                                             f"{flag} mixup or cutmix; {flag} none mixes nothing")
    if cfg.student.mix == "none" and cfg.student.mix_labels != Recipe.mix_labels:
        lines["mix_labels"] = (f"--mix-labels {cfg.student.mix_labels} is for mixed images (--mix mixup or cutmix); "
                               "an unmixed image has its own label")
    if cfg.teacher.mix_labels != Recipe.mix_labels:
        lines["teacher_mix_labels"] = (f"--teacher-mix-labels {cfg.teacher.mix_labels} would leave the teacher no "
                                       "loss: it learns from its labels alone, mixed as the images are")
    if cfg.student.mix != "none" and cfg.data.train_subset:
        lines["mix"] = (f"--mix {cfg.student.mix} with --train-subset is not supported: a subset's sample would mix "
                        "with a partner outside it")
    return lines


def cache_path(cfg: Config) -> Path:
    """--logits, else the run folder's cache for this augmentation, mix, K and storage, so that
    the clean-view cache and each K-view or top-k cache of a study live side by side instead of
    replacing each other (teacher_logits.shift.mixup.20views.safetensors)."""
    if cfg.run.logits:
        return Path(cfg.run.logits)
    spec, views = cache_views(cfg)
    mix = spec.mix.name + (f"{spec.mix.alpha:g}" if spec.mix.alpha != Recipe.mix_alpha else "")  # "mixup0.2"
    parts = [name for name, used in ((spec.name, spec.name != "none"), (mix, bool(spec.mix)),
                                     (f"{views}views", spec.varies), (f"top{cfg.kd.cache_topk}", cfg.kd.cache_topk))
             if used]
    return cfg.run_dir / ".".join(["teacher_logits", *parts, "safetensors"])


def default_cache_dtype(spec: AugmentSpec) -> str:
    """fp32 for the one clean view (small, exact); fp16 for K views (K times the size)."""
    return "fp16" if spec.varies else "fp32"


def cache_dtype(cfg: Config, spec: AugmentSpec) -> str:
    """--cache-dtype, else the default for the views (default_cache_dtype)."""
    return cfg.kd.cache_dtype or default_cache_dtype(spec)


def cache_key(train: DataSource, teacher: TeacherId | str, spec: AugmentSpec = SPECS["none"],
              augment_seed: int = 0) -> CacheKey:
    """What a cache must be made from. teacher: roles.TeacherId (weights and the input the
    teacher sees), or its weights' fingerprint for a teacher that takes the data as they are.
    The spec's augmentation and its mix are stamped apart (`augment`, `mix`)."""
    teacher_input = teacher.input if isinstance(teacher, TeacherId) else describe(of_data(train.norm, train.input_shape[1:]))
    return CacheKey(train.dataset, train.split, len(train), train.num_classes, getattr(teacher, "weights", teacher),
                    train.fingerprint(), spec.describe_crops(), augment_seed if spec.varies else 0, teacher_input,
                    mix=spec.mix.describe())


def frozen_teacher(accelerator: Accelerator, cfg: Config, teacher_path: Path | str, train: DataSource) -> torch.nn.Module:
    """The teacher for inference: on the device, eval mode, no gradients, never wrapped for DDP;
    model.preprocessing says what input it expects (roles.inputs_for)."""
    model, meta = load_model(teacher_path, "teacher", train.input_shape)
    model.preprocessing = file_preprocessing(meta, teacher_path, train)
    model.to(accelerator.device).requires_grad_(False).eval()
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def precompute(accelerator: Accelerator, cfg: Config, teacher_path: Path | str, train: DataSource,
               out_path: Path | str) -> None:
    """Run the frozen teacher over the training set and write the cache: one clean view, or K
    augmented views (cache_views) each from its own counter-based parameters (precompute_views:
    row by row, resumable per view, atomic)."""
    if cfg.kd.cache_topk is not None:  # before K teacher passes, not after them
        check_topk(cfg.kd.cache_topk, train.num_classes)
    model = frozen_teacher(accelerator, cfg, teacher_path, train)
    spec, views = cache_views(cfg)
    teacher = TeacherId(state_fingerprint(model.state_dict()), describe(model.preprocessing))
    key = cache_key(train, teacher, spec, cfg.kd.augment_seed)
    precompute_views(accelerator, cfg, model, train, out_path, key, spec, views, cache_dtype(cfg, spec), teacher_path)


def precompute_views(accelerator: Accelerator, cfg: Config, model: torch.nn.Module, train: DataSource,
                     out_path: Path | str, key: CacheKey, spec: AugmentSpec, views: int, dtype: str,
                     teacher: Path | str = "the teacher") -> None:
    """The precompute of either kind of data source: per view, the source's loader of that view
    (view v of the views drawn from --augment-seed: the in-memory augmentations' parameters ride
    in each batch and are applied on the device, an image folder's crops are made in its
    workers at the teacher's size), the frozen `model` over every batch (each rank its shard),
    and the rows written by sample index into the cache file (cache.CacheWriter, on the main
    process): no [N, C] in memory. A killed precompute resumes at the first unfinished view; a
    teacher whose logits are not all finite (`teacher` names it) is refused, nothing written.
    The logits are rounded to the storage dtype first, so a top-k cache is the compression of
    the full cache the same run would store. A mixed view's logits are the teacher's on the
    mixed image, its mix stored beside the crop's parameters (view_columns)."""
    split, start = train.at(model.preprocessing), time.perf_counter()
    inputs = inputs_for(spec, model.preprocessing)
    plan = DrawnViews(spec, stream_seed("cache", cfg.kd.augment_seed)) if spec.varies else None
    params, identity = view_columns(split, spec), split.identity_columns()
    writer = CacheWriter(out_path, key, views, train.labels, dtype, cfg.kd.cache_topk,
                         params_cols=params and params[2], params_dtype=params[1] if params else torch.float32,
                         identity=identity) if accelerator.is_main_process else None
    done = [sorted(writer.done) if writer else []]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(done)
    if done[0]:
        accelerator.print(f"cache: {len(done[0])} of {views} views kept from an interrupted precompute")
    # the columns each batch brings besides its logits: the view's parameters, the files' digests
    extra = (params[0] if params else ()) + (("digests",) if "file_hashes" in identity else ())
    stored = DTYPES[dtype]
    for v in range(views):
        if v in done[0]:
            continue
        bad = 0

        def write(idx, logits, *cols):
            nonlocal bad
            bad += int((~torch.isfinite(logits).all(dim=1)).sum())  # host rows: no device sync
            if writer is not None:
                named = dict(zip(extra, cols))
                # the crop's and the mix's columns side by side, as one [B, P] (integers: exact in float32)
                row = torch.cat([named[c].to(torch.float32 if params[1] == torch.float32 else torch.int32)
                                 for c in params[0]], 1) if params else None
                writer.write(v, idx, logits.to(stored), row, named.get("digests"))

        loader = split.inference_loader(accelerator, inference_batch(accelerator.device), plan, v)
        predict_rows(accelerator, model, loader, len(split), inputs, write, extra=extra, host=True,
                     desc=f"teacher logits, view {v + 1}/{views}" if views > 1 else "teacher logits")
        try:
            # a NaN cache would fail every later student with "non-finite loss", blaming the student
            if bad:
                raise KDError(f"teacher {teacher} gives non-finite logits for {bad} of {len(train)} training samples"
                              f"{f' (view {v})' if views > 1 else ''}; no cache written")
            if writer is not None:
                writer.view_done(v)  # refuses rows the storage dtype cannot hold (beyond fp16's range)
        except KDError:
            if writer is not None:
                writer.discard()
            raise
        accelerator.wait_for_everyone()
        for hook in HOOKS.view:
            hook(v)
    if writer is not None:
        writer.finish()
    accelerator.wait_for_everyone()
    _wrote(accelerator, cfg, out_path, train, spec, views, dtype, start)


def view_columns(split: DataSource, spec: AugmentSpec) -> tuple[tuple[str, ...], torch.dtype, int] | None:
    """(batch columns, dtype, count) of a view's parameters as a cache stores them: the source's
    (DataSource.view_params: the in-memory augmentations' float32 "aug_params", an image
    folder's uint16 "crops"), then a mix's "mix" (data/mixing.py's 7 integer columns, exact in
    either dtype; uint16 alone); None when the view has none."""
    crops = split.view_params(spec)  # by the spec's name: its crops
    if not spec.mix:
        return crops and ((crops[0],), crops[1], crops[2])
    if crops is None:
        return ("mix",), torch.uint16, len(MIX_COLUMNS)
    return (crops[0], "mix"), crops[1], crops[2] + len(MIX_COLUMNS)


def _wrote(accelerator, cfg, out_path, train, spec, views, dtype, start):
    what = f"{views} views ({spec.describe()})" if views > 1 or spec.varies else "1 view"
    storage = f"top-{cfg.kd.cache_topk}" if cfg.kd.cache_topk else "full"
    accelerator.print(f"cache: wrote {out_path} ({len(train)} x {train.num_classes}, {what}, {dtype}, {storage}) "
                      f"in {time.perf_counter() - start:.1f}s")


def resolve_cache(accelerator: Accelerator, cfg: Config, teacher_path: Path | str, teacher_id: TeacherId,
                  train: DataSource) -> tuple[SoftTargets, bool, Path]:
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
            soft = open_cache(path, key, views=views, explain=train.explain_identity)
            # what the run asks to be stored: full logits are not a top-k run's soft targets, nor
            # fp32 an fp16 run's (the key stamps what produced the logits, not how they are kept)
            want = {"storage": f"top{cfg.kd.cache_topk}" if cfg.kd.cache_topk else "full",
                    "dtype": cache_dtype(cfg, spec)}
            diffs = [f"{name} differs ({name}: cache {getattr(soft, name)!r}, run {value!r})"
                     for name, value in want.items() if getattr(soft, name) != value]
            if diffs:
                raise CacheMismatch(f"stale logits cache {path}: " + "; ".join(diffs))
            check_serves(soft, cfg.kd)  # a top-k cache older than the columns this loss reads
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
    # just written and checksummed by the writer: not hashed again (still checked finite as read)
    soft = open_cache(path, key, verify=False, views=views, explain=train.explain_identity)
    train.expect_content(soft)
    return soft, False, path


def resolve_soft_targets(accelerator: Accelerator, cfg: Config, teacher_path: Path | str, teacher_id: TeacherId,
                         train: DataSource) -> tuple[SoftTargets | None, torch.nn.Module | None, dict[str, Any]]:
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
