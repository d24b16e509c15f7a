"""The experiment's steps, shared by the launch scripts: each script is a few lines of these.

teacher (train or reuse) -> teacher-logits cache (reuse if valid, else precompute) ->
distilled student (reads the cache, never the teacher) -> baseline student (hard labels).
"""
import json
import os
import shutil
import time
from dataclasses import replace

from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

from . import tracking
from .augment import SPECS, apply, draw_params, get_spec, stream_seed
from .cache import DTYPES, CacheKey, SoftTargets, load_cache, load_part, remove_parts, save_cache, save_part
from .checkpointing import RESUME_HINT, check_stamp, resume_progress
from .data import balanced_subset, ensure_downloaded, load_split, to_float
from .errors import KDError
from .evaluation import evaluate, predict_logits
from .hints import FitNetStudent, hint_objective, joint_objective, teacher_hint
from .io import make_dir, write_json
from .losses import loss_name
from .models import (build_model, count_params, load_model, meta_input_shape, meta_number, read_checkpoint, save_model,
                     state_fingerprint)
from .memory import keep_freed_memory
from .threads import set_cpu_threads
from .training import fit, make_objective, online_objective

TEACHER_FILE = "teacher.safetensors"
CACHE_FILE = "teacher_logits.safetensors"
# Called as hook(view) after each view of a K-view precompute is computed and saved (the tests
# interrupt a precompute here to check that it resumes at the next view).
VIEW_HOOKS = []


def make_accelerator(cfg, script=None, **kwargs):
    """The Accelerator every script uses. It owns no randomness: the data order belongs to each
    trained model's loader (data.EpochPermutation, from that model's seed and the epoch), so one
    Accelerator can train many seeds (compare.py) and each still gets its own order.
    With --report-to, it carries the trackers (log_with); TensorBoard writes under
    <run>/tensorboard/<script>/."""
    trackers = tracking.resolve(getattr(cfg, "report_to", "none"))
    if trackers:
        kwargs.update(log_with=trackers, project_config=ProjectConfiguration(
            project_dir=str(cfg.run_dir), logging_dir=str(cfg.run_dir / "tensorboard" / (script or "run"))))
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
        dynamo_backend="inductor" if cfg.compile else None,
        **kwargs,
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise KDError("fp16 mixed precision needs a GPU; on CPU use --mixed-precision bf16 (or no)")
    if accelerator.device.type == "cpu":
        # every physical core unless the user chose (accelerate launch's default is 1 thread)
        accelerator.print(set_cpu_threads(), flush=True)
        keep_freed_memory()  # no page-fault storm per step (kd_accel/memory.py); same arithmetic
    if getattr(cfg, "report_to", "none") == "all":
        accelerator.print(f"--report-to all: {', '.join(trackers) or 'no tracker installed, nothing logged'}")
    return accelerator


def setup(cfg, script):
    """Accelerator, seed and run folder. The configuration is written by `write_config` once the
    script's work is done: written here, a failed run would leave a finished run's results
    beside a config.json that did not make them."""
    accelerator = make_accelerator(cfg, script)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        make_dir(cfg.run_dir)
    # trackers get the resolved configuration (what config.json will say) as hyper-parameters
    tracking.start(accelerator, resolved_config(accelerator, cfg, script), f"{cfg.run_dir.name}-{script}")
    return accelerator


def resolved_config(accelerator, cfg, script):
    return {**cfg.to_json(), "script": script, "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision}


def write_config(accelerator, cfg, script):
    """config.json (distill.py) or config.<script>.json beside the outputs it describes; call it
    when they are written, before metrics.json (main process only)."""
    if accelerator.is_main_process:
        write_json(cfg.run_dir / f"config.{script}.json" if script != "distill" else cfg.run_dir / "config.json",
                   resolved_config(accelerator, cfg, script))


RESULT_FILES = ("metrics.json", "config.json", "student.safetensors", "baseline.safetensors")


def set_aside_previous_result(accelerator, cfg):
    """distill.py, started afresh in a folder holding a finished result: move that result
    (metrics.json first, then the files it describes) into <run>/previous/, so a run that fails
    half-way never leaves new weights beside old metrics, and the last good result is kept.
    The teacher and the cache stay: they are stamped and checked on reuse."""
    if cfg.resume or not (cfg.run_dir / "metrics.json").exists():
        return
    if accelerator.is_main_process:
        previous = cfg.run_dir / "previous"
        shutil.rmtree(previous, ignore_errors=True)
        make_dir(previous)
        for name in RESULT_FILES:
            if (cfg.run_dir / name).exists():
                os.replace(cfg.run_dir / name, previous / name)
        accelerator.print(f"previous result moved to {previous} (a new run starts here; --resume latest continues one)")
    accelerator.wait_for_everyone()


def load_data(accelerator, cfg):
    """(train, test) splits as tensors; the main process downloads first if it must."""
    with accelerator.main_process_first():
        ensure_downloaded(cfg.dataset, cfg.data_dir)
    train = load_split(cfg.dataset, "train", cfg.data_dir).subset(cfg.limit_train)
    test = load_split(cfg.dataset, "test", cfg.data_dir).subset(cfg.limit_test)
    return train, test


def columns(split, **extra):
    return {"images": split.images, "labels": split.labels, **extra}


def teacher_recipe(cfg):
    """distill.py trains its teacher with the --teacher-* flags; train_teacher.py uses the plain
    --epochs/--lr/--schedule/--augment, which there are the teacher's."""
    return replace(cfg, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, schedule=cfg.teacher_schedule,
                   augment=cfg.teacher_augment or cfg.augment)


def make_inputs(spec, norm=None):
    """batch -> the model's float input: each sample's view built from the batch's "aug_params"
    (when the phase augments), then scaled (and normalised per channel where the data set says)."""
    def inputs(batch):
        images = batch["images"]
        if "aug_params" in batch:
            images = apply(spec, images, batch["aug_params"])
        return to_float(images, norm)

    return inputs


def drawn_views(spec, stream, n):
    """epoch -> {"aug_params": [N, 5]}: a fresh view per epoch (view e in epoch e) of every sample,
    from the stream's counter-based generator (teacher, baseline, and the fixed and online
    students). None when the phase does not augment."""
    if spec.name == "none":
        return None
    index = torch.arange(n)
    return lambda epoch: {"aug_params": draw_params(spec, stream, epoch, index)}


def cached_views(soft):
    """epoch -> view e mod K of a K-view cache: the parameters the teacher's view was made with
    and the teacher's logits on it, so the student sees exactly what the teacher saw."""
    def cols(epoch):
        view = epoch % soft.views
        return {"teacher_logits": soft.logits(view), "aug_params": soft.params(view)}

    return cols


def cache_views(cfg):
    """(augmentation spec, K) of the cache this run's students read: K augmented views in
    'cache' mode with augmentation (K = --views, default one per epoch), else one clean view."""
    spec = get_spec(cfg.augment)
    if cfg.teacher_mode == "cache" and spec.name != "none":
        return spec, cfg.views or cfg.epochs
    return SPECS["none"], 1


def cache_path(cfg):
    """--logits, else the run folder's cache for this augmentation and K, so that the clean-view
    cache and each K-view cache of a study live side by side instead of replacing each other."""
    if cfg.logits:
        return Path(cfg.logits)
    spec, views = cache_views(cfg)
    if spec.name == "none":
        return cfg.run_dir / CACHE_FILE
    return cfg.run_dir / f"teacher_logits.{spec.name}.{views}views.safetensors"


def cache_dtype(cfg, spec):
    return cfg.cache_dtype or ("fp32" if spec.name == "none" else "fp16")


def run_info(model, hist, **extra):
    """What metrics.json records of a trained model: final accuracy, size, time, history."""
    return {"test_accuracy": hist["epochs"][-1]["test_accuracy"], "params": count_params(model),
            "train_time_s": hist["train_time_s"], "epochs": hist["epochs"], **extra}


def phase_settings(accelerator, cfg, train, student=True, teacher_fp=None, kd=False, hints=False):
    """The settings that shape a phase's weights and reported numbers, from the recipe the phase
    actually uses (teacher_recipe, a compare variant, a seed). Stamped on its checkpoints and its
    finished model file, and compared on resume or reuse, so that no run continues or reuses
    another recipe's work under its own labels. Left out: paths, checkpoint cadence,
    channels-last and --compile (same math). The baseline has no KD settings: changing T leaves
    it valid."""
    s = {"dataset": cfg.dataset, "data": train.fingerprint(), "limit_train": cfg.limit_train,
         "limit_test": cfg.limit_test, "seed": cfg.seed, "epochs": cfg.epochs, "lr": cfg.lr,
         "schedule": cfg.schedule, "batch_size": cfg.batch_size, "processes": accelerator.num_processes,
         "grad_accum": cfg.grad_accum, "mixed_precision": accelerator.mixed_precision}
    if cfg.augment != "none":  # stamped only when on: runs without augmentation keep their old stamps
        s["augment"] = get_spec(cfg.augment).describe()
    if not student:  # the teacher always trains on the whole (limited) training set
        return s
    s["train_subset"] = cfg.train_subset
    if kd:
        s.update(kd_loss=loss_name(cfg.kd_loss), temperature=cfg.temperature, alpha=cfg.alpha, teacher=teacher_fp,
                 soft_targets=cfg.soft_targets if cfg.train_subset else None)
        if cfg.teacher_mode != "cache" or cfg.augment != "none":
            s["teacher_mode"] = cfg.teacher_mode
        spec, views = cache_views(cfg)
        if views > 1:
            s.update(views=views, augment_seed=cfg.augment_seed)
        if cfg.cache_topk:
            s["cache_topk"] = cfg.cache_topk
    if hints:
        two_stage = cfg.hint_mode == "two-stage"  # hint_epochs is used only there, hint_beta only in joint
        s.update(hint_mode=cfg.hint_mode,
                 **({"hint_epochs": cfg.hint_epochs} if two_stage else {"hint_beta": cfg.hint_beta}))
    return s


def check_resume_target(cfg, script, phases):
    """--resume PATH continues only the phase recorded in PATH, and only in this run's folder:
    refuse, before any work, a checkpoint of another run or of a phase this run does not have."""
    if cfg.resume in (None, "latest"):
        return
    path = Path(cfg.resume)
    progress = resume_progress(path)
    phase = progress.get("phase")
    if phase is None:
        raise KDError(f"--resume {path}: this checkpoint predates phase stamps, so which phase and settings it "
                      f"belongs to is unknown; use --resume latest, or a new --output-dir")
    own = (cfg.run_dir / "checkpoints").resolve()
    if own not in path.resolve().parents:
        raise KDError(f"--resume {path} is a checkpoint of run {progress.get('run')} (phase {phase!r}), not of this "
                      f"run ({cfg.run_dir}); give that run's folder as --output-dir")
    if phase not in phases:
        raise KDError(f"--resume {path} is a checkpoint of phase {phase!r}, which {script} does not run here "
                      f"(its phases: {', '.join(phases)})")


def model_stamp(path):
    """(phase, settings) stamped in a finished model file; settings None if it predates stamps."""
    _, meta = read_checkpoint(path)
    return meta.get("phase"), json.loads(meta["settings"]) if "settings" in meta else None


def train_teacher(accelerator, cfg, train, test, path):
    """Train the teacher on hard labels and save it (with its test accuracy) to `path`."""
    set_seed(cfg.seed)
    settings = phase_settings(accelerator, cfg, train, student=False)
    model = build_model("teacher", train.num_classes, train.input_shape)
    spec = get_spec(cfg.augment)
    model, hist = fit(accelerator, model, columns(train), test, cfg, make_objective("ce"), "teacher",
                      cfg.run_dir / "checkpoints" / "teacher", settings, inputs=make_inputs(spec, train.norm),
                      epoch_columns=drawn_views(spec, stream_seed("teacher", cfg.seed), len(train)))
    info = run_info(model, hist)
    if accelerator.is_main_process:
        save_model(model, path, "teacher", train.num_classes, dataset=cfg.dataset,
                   test_accuracy=info["test_accuracy"], test_fingerprint=test.fingerprint(),
                   params=info["params"], train_time_s=info["train_time_s"], seed=cfg.seed,
                   phase="teacher", settings=json.dumps(settings))
    accelerator.wait_for_everyone()
    return info


def teacher_info_from_checkpoint(accelerator, path, test):
    """Teacher metrics without running it, when its checkpoint recorded them for this test set;
    otherwise (a checkpoint from elsewhere) evaluate it once."""
    state, meta = read_checkpoint(path)
    if meta.get("arch") != "teacher":
        raise KDError(f"{path} holds a {meta.get('arch')!r} model, not a teacher")
    if meta_input_shape(meta, path) != test.input_shape:  # an MNIST teacher given for CIFAR-10
        raise KDError(f"{path} holds a teacher for {'x'.join(map(str, meta_input_shape(meta, path)))} inputs, "
                      f"the data are {'x'.join(map(str, test.input_shape))}")
    if meta.get("test_fingerprint") == test.fingerprint() and "test_accuracy" in meta:
        acc = meta_number(meta, "test_accuracy", path)
        params = meta_number(meta, "params", path, int)
        note = "reused"
    else:
        model, _ = load_model(path, "teacher")
        acc = evaluate(accelerator, model.to(accelerator.device), test)
        params = count_params(model)
        note = "reused, evaluated"
    train_time = meta_number(meta, "train_time_s", path) if "train_time_s" in meta else None
    return {"test_accuracy": acc, "params": params, "train_time_s": train_time, "note": note,
            "fingerprint": state_fingerprint(state)}


def resolve_teacher(accelerator, cfg, train, test):
    """--teacher PATH, else the run folder's teacher, else train one. Returns (path, info)."""
    path = Path(cfg.teacher) if cfg.teacher else cfg.run_dir / TEACHER_FILE
    if path.exists() and not cfg.teacher:  # the run's own teacher: only if this run's recipe made it
        settings = phase_settings(accelerator, teacher_recipe(cfg), train, student=False)
        # a reused teacher is re-evaluated when the test set differs: --limit-test may change
        old, same_test = model_stamp(path)[1], {"limit_test": cfg.limit_test}
        check_stamp(f"teacher: {path}", old and {**old, **same_test}, {**settings, **same_test},
                    f"rerun with the old values (--teacher-epochs/--teacher-lr/--teacher-schedule/--teacher-augment in distill.py "
                    f"and compare.py), pass --teacher {path} to use it as it is, or use a new --output-dir")
    if path.exists():
        accelerator.print(f"teacher: reusing {path} (no teacher training)")
        return path, teacher_info_from_checkpoint(accelerator, path, test)
    accelerator.print(f"teacher: {path} not found, training it")
    info = train_teacher(accelerator, teacher_recipe(cfg), train, test, path)
    info["note"] = "trained"
    info["fingerprint"] = state_fingerprint(read_checkpoint(path)[0])
    return path, info


def cache_key(train, teacher_fingerprint, spec=SPECS["none"], augment_seed=0):
    return CacheKey(train.dataset, train.split, len(train), train.num_classes, teacher_fingerprint, train.fingerprint(),
                    spec.describe(), augment_seed if spec.name != "none" else 0)


def frozen_teacher(accelerator, cfg, teacher_path):
    """The teacher for inference: on the device, eval mode, no gradients, never wrapped for DDP."""
    model, _ = load_model(teacher_path, "teacher")
    model.to(accelerator.device).requires_grad_(False).eval()
    if cfg.channels_last:
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
    model = frozen_teacher(accelerator, cfg, teacher_path)
    spec, views = cache_views(cfg)
    dtype = cache_dtype(cfg, spec)
    key = cache_key(train, state_fingerprint(model.state_dict()), spec, cfg.augment_seed)
    stream, index, inputs = stream_seed("cache", cfg.augment_seed), torch.arange(len(train)), make_inputs(spec, train.norm)
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
                   params=torch.stack(params) if spec.name != "none" else None, topk=cfg.cache_topk)
        remove_parts(out_path)
    accelerator.wait_for_everyone()
    what = f"{views} views ({spec.describe()})" if views > 1 or spec.name != "none" else "1 view"
    storage = f"top-{cfg.cache_topk}" if cfg.cache_topk else "full"
    accelerator.print(f"cache: wrote {out_path} ({len(train)} x {train.num_classes}, {what}, {dtype}, {storage}) "
                      f"in {time.perf_counter() - start:.1f}s")


def resolve_cache(accelerator, cfg, teacher_path, teacher_fp, train):
    """Validated soft targets (cache.SoftTargets) for this teacher, data and augmentation.
    Returns (soft, hit, path).

    An explicit --logits file that does not match is refused; the run folder's own stale cache
    is replaced (and the reason printed)."""
    path = cache_path(cfg)
    spec, views = cache_views(cfg)
    key = cache_key(train, teacher_fp, spec, cfg.augment_seed)
    if path.is_dir():
        raise KDError(f"logits cache {path} is a directory, not a file: remove or rename it")
    if path.exists():
        try:
            soft = load_cache(path, key, views=views)
            accelerator.print(f"cache: hit {path} (no teacher forward pass)")
            return soft, True, path
        except KDError as e:
            if cfg.logits:
                raise
            accelerator.print(f"cache: refusing {e}; recomputing")
    else:
        accelerator.print(f"cache: miss, {path} does not exist; precomputing teacher logits")
    precompute(accelerator, cfg, teacher_path, train, path)
    return load_cache(path, key, views=views), False, path


def resolve_soft_targets(accelerator, cfg, teacher_path, teacher_fp, train):
    """Where the distilled students' soft targets come from: (soft, online, info). The cache
    (modes cache and fixed: cache.SoftTargets, validated or precomputed) or, in online mode, the
    frozen teacher itself, run on every batch. `info` is what metrics.json records."""
    if cfg.teacher_mode == "online":
        accelerator.print("teacher: online, run on every student batch (no cache)")
        return None, frozen_teacher(accelerator, cfg, teacher_path), {"mode": "online"}
    soft, hit, path = resolve_cache(accelerator, cfg, teacher_path, teacher_fp, train)
    return soft, None, {"mode": cfg.teacher_mode, "hit": hit, "path": str(path), "dtype": soft.meta.get("dtype"),
                        "views": soft.views, "storage": soft.storage}


def student_data(cfg, train, soft=None, online=None):
    """(columns, objective, epoch_columns) of a student run.

    Baseline (soft and online None): hard labels. Distilled: soft targets gathered by sample
    index, from `soft` (cache.SoftTargets, or a [N, C] tensor: one clean view) or from the frozen
    teacher `online` run on the student's own batch. With --augment the student sees a fresh view
    per epoch, except from a K-view cache, whose view e mod K (parameters and logits) it replays.
    With --train-subset N only a class-balanced subset keeps its labels: the baseline trains on it
    alone; a distilled student uses soft targets on the subset (--soft-targets subset) or on the
    whole training set (all, the default), its hard loss then masked to the labelled samples."""
    spec = get_spec(cfg.augment)
    per_epoch = drawn_views(spec, stream_seed("student", cfg.seed), len(train))
    extra = {}
    if isinstance(soft, SoftTargets) and soft.params(0) is not None:
        per_epoch = cached_views(soft)  # consistent: the teacher's own views
    elif soft is not None:  # one clean view: with --augment, the student's views are not the teacher's
        extra["teacher_logits"] = soft.logits(0) if isinstance(soft, SoftTargets) else soft
    distilled = soft is not None or online is not None
    objective = make_objective(cfg.kd_loss, cfg.temperature, cfg.alpha) if distilled else make_objective("ce")
    if online is not None:
        objective = online_objective(online, objective)
    cols = columns(train, **extra)
    if not cfg.train_subset:
        return cols, objective, per_epoch
    keep = balanced_subset(train.labels, cfg.train_subset)
    if not distilled or cfg.soft_targets == "subset":
        sub = per_epoch and (lambda epoch: {k: v[keep] for k, v in per_epoch(epoch).items()})
        return {k: v[keep] for k, v in cols.items()}, objective, sub
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[keep] = True
    return {**cols, "label_mask": mask}, objective, per_epoch


def _finished(accelerator, cfg, label, settings):
    """With --resume, a student phase whose weights (and metrics) were saved with these settings
    is not redone; saved with other settings, it is refused by name."""
    path = cfg.run_dir / f"{label}.safetensors"
    if cfg.resume and path.exists():
        _, meta = read_checkpoint(path)
        if "info" in meta:
            check_stamp(f"{label}: {path}", model_stamp(path)[1], settings, RESUME_HINT)
            accelerator.print(f"{label}: already finished in {path}, not retrained (--resume)")
            return json.loads(meta["info"])
    return None


def _save_student(accelerator, cfg, model, info, label, num_classes, settings):
    path = cfg.run_dir / f"{label}.safetensors"
    if accelerator.is_main_process:
        save_model(model, path, "student", num_classes, info=json.dumps(info), seed=cfg.seed,
                   phase=label, settings=json.dumps(settings))
    accelerator.wait_for_everyone()
    return info


def train_student(accelerator, cfg, train, test, soft, label, teacher_fp=None, online=None):
    """Distilled student when soft targets are given (`soft`: cache.SoftTargets or a [N, C]
    tensor; or `online`: the frozen teacher, run on each batch), baseline (hard labels) if
    neither. Both start from the same seed, so they differ only in the loss. Saves
    <run>/<label>.safetensors with its metrics; with --resume, a finished phase is not redone.
    `teacher_fp`: the weight fingerprint of the teacher behind the soft targets (stamped)."""
    kd = soft is not None or online is not None
    settings = phase_settings(accelerator, cfg, train, teacher_fp=teacher_fp, kd=kd)
    done = _finished(accelerator, cfg, label, settings)
    if done:
        return done
    set_seed(cfg.seed)
    model = build_model("student", train.num_classes, train.input_shape)
    cols, objective, per_epoch = student_data(cfg, train, soft, online)
    model, hist = fit(accelerator, model, cols, test, cfg, objective, label, cfg.run_dir / "checkpoints" / label,
                      settings, inputs=make_inputs(get_spec(cfg.augment), train.norm), epoch_columns=per_epoch)
    return _save_student(accelerator, cfg, model, run_info(model, hist), label, train.num_classes, settings)


def train_fitnet_student(accelerator, cfg, train, test, teacher_path, soft, label, teacher_fp=None, online=None):
    """FitNets: hints from the teacher's block 2 plus KD from the cache. 'two-stage' (the
    paper): cfg.hint_epochs of hint regression, then cfg.epochs of KD; 'joint': cfg.epochs of
    KD + hint_beta x hint. The teacher runs online (first two blocks, frozen, not DDP-wrapped)."""
    settings = phase_settings(accelerator, cfg, train, teacher_fp=teacher_fp, kd=True, hints=True)
    done = _finished(accelerator, cfg, label, settings)
    if done:
        return done
    teacher, _ = load_model(teacher_path, "teacher")
    hint = teacher_hint(teacher.to(accelerator.device))
    set_seed(cfg.seed)
    wrapped = FitNetStudent(build_model("student", train.num_classes, train.input_shape))
    cols, kd, per_epoch = student_data(cfg, train, soft, online)
    views = dict(inputs=make_inputs(get_spec(cfg.augment), train.norm), epoch_columns=per_epoch)
    ckpt = cfg.run_dir / "checkpoints" / label
    if cfg.hint_mode == "two-stage":
        stage_cfg = replace(cfg, epochs=cfg.hint_epochs)
        _, h1 = fit(accelerator, wrapped.hint_stage(), cols, None, stage_cfg, hint_objective(hint), f"{label} hints",
                    ckpt / "hints", settings, **views)
        student, h2 = fit(accelerator, wrapped.student, cols, test, cfg, kd, label, ckpt / "kd", settings, **views)
        hist = {"epochs": h2["epochs"], "train_time_s": h1["train_time_s"] + h2["train_time_s"]}
        extra = {"hint_epochs": h1["epochs"]}
    else:
        obj = joint_objective(hint, cfg.kd_loss, cfg.temperature, cfg.alpha, cfg.hint_beta)
        if online is not None:
            obj = online_objective(online, obj)
        wrapped, hist = fit(accelerator, wrapped, cols, test, cfg, obj, label, ckpt, settings, **views)
        student, extra = wrapped.student, {}
    info = run_info(student, hist, hint_mode=cfg.hint_mode, **extra)
    return _save_student(accelerator, cfg, student, info, label, train.num_classes, settings)
