"""The experiment's steps, shared by the launch scripts: each script is a few lines of these.

teacher (train or reuse) -> teacher-logits cache (reuse if valid, else precompute) ->
distilled student (reads the cache, never the teacher) -> baseline student (hard labels).
"""
import json
import os
import shutil
import time
from dataclasses import replace
from functools import partial

from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed

from . import tracking
from .augment import get_spec, stream_seed
from .cache import check_topk
from .checkpointing import RESUME_HINT, STAMP_VERSION, Stamp, check_stamp, resume_progress
from .config import stamped_fields
from .data import balanced_subset, ensure_downloaded, open_splits, reads_in_workers
from .determinism import set_deterministic
from .errors import KDError
from .evaluation import evaluate
from .hints import FitNetStudent, hint_objective, joint_objective, teacher_hint
from .io import make_dir, write_json
from .losses import loss_name
from .models import count_params, load_model, meta_number, meta_record, meta_role, read_checkpoint, save_model, state_fingerprint
from .models import build_from_spec, load_weights
from .models.zoo import HeadReset, check_input_size
from .models.preprocessing import describe
from .roles import build, recipe_record, check_fitnets, file_preprocessing, inputs_for, resolved_recipe
from .memory import keep_freed_memory
from .overhead import remove_overhead
from .runlock import hold_run_folder
from .threads import set_cpu_threads
from .teaching import cache_dtype, cache_views
from .soft_targets import own_views, source_of
from .training import fit, make_objective

TEACHER_FILE = "teacher.safetensors"


def make_accelerator(cfg, script=None, say_threads=True, **kwargs):
    """The Accelerator every script uses. It owns no randomness: the data order belongs to each
    trained model's loader (data.EpochPermutation, from that model's seed and the epoch), so one
    Accelerator can train many seeds (compare.py) and each still gets its own order.
    With --report-to, it carries the trackers (log_with); TensorBoard writes under
    <run>/tensorboard/<script>/. It sets the CPU threads and prints them, unless `say_threads`
    is False (an image folder's run: load_data prints the one true line once it knows the workers)."""
    trackers = tracking.resolve(cfg.run.report_to)
    if trackers:
        logging_dir = cfg.run_dir / "tensorboard" / (script or "run")
        tracking.check_logging_dir(trackers, logging_dir)  # before the run folder exists, so nothing is left
        kwargs.update(log_with=trackers, project_config=ProjectConfiguration(
            project_dir=str(cfg.run_dir), logging_dir=str(logging_dir)))
    set_deterministic(cfg.run.deterministic)  # before any kernel runs (kd_accel/determinism.py)
    accelerator = Accelerator(
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.run.grad_accum,
        # non_blocking: an image folder's pinned batches (data/streamed.py) copied to the GPU
        # asynchronously, in order with the step that uses them
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False, non_blocking=True),
        dynamo_backend="inductor" if cfg.run.compile else None,
        **kwargs,
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise KDError("fp16 mixed precision needs a GPU; on CPU use --mixed-precision bf16 (or no)")
    # every physical core unless the user chose (accelerate launch's default is 1 thread); on a
    # GPU too, where the host still decodes, gathers and launches
    threads = set_cpu_threads()
    if say_threads:
        accelerator.print(threads, flush=True)
    # no page-fault storm per step (kd_accel/memory.py); same arithmetic. Not for an image folder:
    # its epochs measured no faster with it, and the kept heap grew with the epoch's length
    # (docs/performance.md), where a folder run's memory must not grow with the data
    if accelerator.device.type == "cpu" and not reads_in_workers(cfg.data.dataset):
        keep_freed_memory()
    remove_overhead()  # Accelerate's per-step package probe, gc over torch's objects (kd_accel/overhead.py)
    if cfg.run.report_to == "all":
        accelerator.print(f"--report-to all: {', '.join(trackers) or 'no tracker installed, nothing logged'}")
    return accelerator


def setup(cfg, script, run_folder=True):
    """Accelerator, seed and run folder. The configuration is written by `write_config` once the
    script's work is done: written here, a failed run would leave a finished run's results
    beside a config.json that did not make them. `run_folder` False (precompute_logits.py --out
    alone, which names the one file to write): no run folder is made or locked.
    Call load_data next: an image folder's run prints its CPU threads there."""
    accelerator = make_accelerator(cfg, script, say_threads=not reads_in_workers(cfg.data.dataset))
    set_seed(cfg.run.seed)
    if accelerator.is_main_process and run_folder:
        make_dir(cfg.run_dir)
        # before anything is written or removed here; the other ranks write under rank 0's lock.
        # Refused, rank 0 exits 2 and the launcher stops the others (waiting in the next barrier).
        hold_run_folder(cfg.run_dir, script)
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
    if cfg.run.resume or not (cfg.run_dir / "metrics.json").exists():
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


def load_data(accelerator, cfg, run_folder=True):
    """(train, test) splits: tensors, or an image folder's listings (kd_accel/data); the main
    process downloads first if it must. An image folder's listings are kept in the run folder
    (none without one: `run_folder` False, as setup's); its CPU threads line is printed here."""
    d = cfg.data
    with accelerator.main_process_first():
        ensure_downloaded(d.dataset, d.data_dir)
    train, test = open_splits(d.dataset, d.data_dir, d.channels, d.num_workers)  # val labelled by train's classes
    train, test = train.subset(d.limit_train), test.subset(d.limit_test)
    check_against_data(cfg, train)
    if run_folder:
        # what a later run needs to name a change of the data (an image folder's listings), and
        # what is checked as the data are read (its files' bytes: data/content.py)
        if accelerator.is_main_process:
            for split in (train, test):
                split.remember(cfg.run_dir)
        accelerator.wait_for_everyone()
        for split in (train, test):
            split.use_records(cfg.run_dir)
    line = train.threads_line(accelerator.device)  # a folder run's one threads line (setup left it to here)
    if line:
        accelerator.print(line, flush=True)
    return train, test


def check_against_data(cfg, train):
    """The settings whose bounds are the data's (class count, labels per class), checked as soon
    as the data are read, before any model runs: found later, they would stop a run after its
    teacher trained (compare.py: after earlier variants ran; it checks each variant's here)."""
    if cfg.kd.cache_topk is not None:
        try:
            check_topk(cfg.kd.cache_topk, train.num_classes)
        except KDError as e:
            raise KDError(f"--cache-topk {cfg.kd.cache_topk}: {e}") from None
    train.check_options(cfg.data.channels, cfg.data.num_workers, cfg.data.train_subset)
    if cfg.data.train_subset:
        balanced_subset(train.labels, cfg.data.train_subset)
    for recipe in (cfg.student, cfg.teacher):
        if recipe.augment:
            train.check_augment(get_spec(recipe.augment))
    # each model for these data, before the teacher trains (check_model); a teacher file's classes
    for role, recipe in [("student", cfg.student)] + [("teacher", cfg.teacher)] * (not cfg.run.teacher):
        check_model(recipe, train, role)
    if cfg.run.teacher:
        check_teacher_classes(read_checkpoint(cfg.run.teacher)[1], cfg.run.teacher, train)


# the flag that sets each role's input size (train_teacher.py takes the teacher's unprefixed)
SIZE_FLAGS = {"student": "--image-size", "teacher": "--teacher-image-size (train_teacher.py: --image-size)"}


def check_model(recipe, train, role):
    """The model `recipe` names, for these data, before any work: its preprocessing (e.g.
    --normalize weights where none is known); its --weights read (finite), fitting the
    architecture; a teacher used as its weights give it (epochs 0) whose classifier they do not
    fit (it would teach from a random head); and the input size: the model must run on the
    preprocessing's size (and train there, unless a teacher used as it is), or it is refused
    naming a size it runs at (zoo.check_input_size)."""
    record = recipe_record(recipe, train)
    model, notes = build_from_spec(record)
    if recipe.weights:
        notes = notes + load_weights(model, recipe.weights)
    used_as_is = role == "teacher" and recipe.epochs == 0
    for note in notes:
        if used_as_is and isinstance(note, HeadReset):
            raise KDError(f"--teacher-weights {recipe.weights} are for {note.n_file} classes, the data have "
                          f"{note.n_model}: the classifier would be re-initialised, and --teacher-epochs 0 uses the "
                          f"teacher untrained (a random teacher); fine-tune it (--teacher-epochs N) or give weights "
                          f"for {note.n_model} classes")
    check_input_size(model, record["spec"], record["input_shape"], SIZE_FLAGS[role], train=not used_as_is)


def check_teacher_classes(meta, path, data):
    """A teacher file (--teacher) made for the data's class count, or one line naming both
    counts: its logits would fill a cache for other classes."""
    n = meta_record(meta, path)["num_classes"]
    if n != data.num_classes:
        raise KDError(f"--teacher {path} is a teacher for {n} classes, the data ({data.dataset}) have "
                      f"{data.num_classes}: its logits cannot teach these classes; give a teacher trained on these "
                      "data, or fine-tune one from its weights (--teacher-arch A --teacher-weights W)")


def teacher_arch(cfg):
    """The teacher's architecture spec: --teacher's file says it, else --teacher-arch."""
    if not cfg.run.teacher:
        return cfg.teacher.arch
    return meta_record(read_checkpoint(cfg.run.teacher)[1], cfg.run.teacher)["spec"]


def columns(split, **extra):
    """An in-memory split's columns for training.fit, with `extra` ones (benchmarks, tests)."""
    return {"images": split.images, "labels": split.labels, **extra}


def run_info(model, hist, **extra):
    """What metrics.json records of a trained model: final accuracy, size, time, history."""
    return {"test_accuracy": hist["epochs"][-1]["test_accuracy"], "params": count_params(model),
            "train_time_s": hist["train_time_s"], "epochs": hist["epochs"], **extra}


# The groups of settings each kind of phase reads (config.py: a setting of these groups is stamped
# unless declared `unstamped`, or declared for other phases only).
PHASE_GROUPS = {"teacher": ("data", "teacher", "run"), "baseline": ("data", "student", "run"),
                "student": ("data", "student", "kd", "run"), "fitnets": ("data", "student", "kd", "run")}


def phase_kind(student=True, kd=False, hints=False):
    return "teacher" if not student else "fitnets" if hints else "student" if kd else "baseline"


def resolved_settings(accelerator, cfg, recipe, train):
    """Settings whose flag value is not yet what the phase uses: resolved, so that naming a
    default (or an old loss name) is not a change, and a default that depends on other settings
    (K, the cache's dtype, the model's preprocessing) is stamped as used; --weights by content."""
    spec, views = cache_views(cfg)
    online = cfg.kd.teacher_mode == "online"
    return {"augment": get_spec(recipe.augment).describe(), "mixed_precision": accelerator.mixed_precision,
            "kd_loss": loss_name(cfg.kd.kd_loss), "views": views, "cache_dtype": None if online else cache_dtype(cfg, spec),
            **resolved_recipe(recipe, train)}


def phase_settings(accelerator, cfg, train, student=True, teacher_fp=None, kd=False, hints=False):
    """The settings that shape a phase's weights and reported numbers, stamped on its checkpoints
    and its finished model file and compared on resume or reuse, so that no run continues or
    reuses another recipe's work under its own labels.

    Derived from the declarations, not listed here: every setting of the groups the phase reads
    (PHASE_GROUPS; the teacher's recipe for the teacher), by name, resolved where its flag is not
    yet the value used; plus what no flag says: the data's fingerprint, the processes and, for a
    distilled student, the teacher's weights and input (`teacher_fp`: roles.TeacherId, or the
    weights' fingerprint alone). So a new setting cannot be left out by accident."""
    phase = phase_kind(student, kd, hints)
    recipe = cfg.student if student else cfg.teacher
    resolved = resolved_settings(accelerator, cfg, recipe, train)
    s = Stamp({"stamp": STAMP_VERSION, "phase_kind": phase, "data": train.fingerprint(),
               "processes": accelerator.num_processes})
    s.explain = partial(train.explain_change, cfg.run_dir)  # a changed image folder is named by its files
    for group in PHASE_GROUPS[phase]:
        values = recipe if group in ("student", "teacher") else getattr(cfg, group)
        for name in stamped_fields(group, phase):
            s[name] = resolved.get(name, getattr(values, name))
    if phase in ("student", "fitnets"):
        s["teacher_weights"] = getattr(teacher_fp, "weights", teacher_fp)
        s["teacher_input"] = getattr(teacher_fp, "input", None)
    return s


def check_resume_target(cfg, script, phases):
    """--resume PATH continues only the phase recorded in PATH, and only in this run's folder:
    refuse, before any work, a checkpoint of another run or of a phase this run does not have."""
    if cfg.run.resume in (None, "latest"):
        return
    path = Path(cfg.run.resume)
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


def model_stamp(path, meta=None):
    """(phase, settings) stamped in a finished model file (or its metadata, already read);
    settings None if it predates stamps."""
    meta = read_checkpoint(path)[1] if meta is None else meta
    return meta.get("phase"), json.loads(meta["settings"]) if "settings" in meta else None


def train_teacher(accelerator, cfg, train, test, path):
    """Train the teacher (recipe cfg.teacher) on hard labels and save it, with its test accuracy,
    to `path`."""
    set_seed(cfg.run.seed)
    settings = phase_settings(accelerator, cfg, train, student=False)
    model, record = build(cfg.teacher, train, "teacher", accelerator.print)
    spec, prep = get_spec(cfg.teacher.augment), record["preprocessing"]
    inputs = inputs_for(spec, prep)
    if cfg.teacher.epochs == 0:  # --teacher-weights as they are: evaluated, recorded, stamped
        start = time.perf_counter()
        acc = evaluate(accelerator, model.to(accelerator.device), test.at(prep), inputs=inputs)
        hist = {"epochs": [{"epoch": 0, "test_accuracy": acc}], "train_time_s": 0.0}
        accelerator.print(f"teacher: {cfg.teacher.weights} used as it is (--teacher-epochs 0): {acc:.2f}% test "
                          f"accuracy, evaluated in {time.perf_counter() - start:.1f}s")
    else:
        data = train.at(prep).train_data(own_views(spec, stream_seed("teacher", cfg.run.seed)))
        model, hist = fit(accelerator, model, data, test.at(prep), cfg.teacher, cfg.run, make_objective("ce"),
                          "teacher", cfg.run_dir / "checkpoints" / "teacher", settings, inputs=inputs)
    info = run_info(model, hist)
    if accelerator.is_main_process:
        save_model(model, path, "teacher", train.num_classes, record=record, dataset=cfg.data.dataset,
                   test_accuracy=info["test_accuracy"], test_fingerprint=test.fingerprint(),
                   params=info["params"], train_time_s=info["train_time_s"], seed=cfg.run.seed,
                   phase="teacher", settings=json.dumps(settings))
    accelerator.wait_for_everyone()
    return info


def teacher_info_from_checkpoint(accelerator, path, test):
    """Teacher metrics without running it, when its checkpoint recorded them for this test set;
    otherwise (a checkpoint from elsewhere) evaluate it once."""
    model, meta = load_model(path, None, test.input_shape)  # e.g. an MNIST teacher given for CIFAR-10: refused
    if meta_role(meta) != "teacher":
        raise KDError(f"{path} holds a {meta_role(meta)!r} model, not a teacher")
    check_teacher_classes(meta, path, test)
    prep = file_preprocessing(meta, path, test)
    if meta.get("test_fingerprint") == test.fingerprint() and "test_accuracy" in meta:
        acc = meta_number(meta, "test_accuracy", path)
        note = "reused"
    else:
        acc = evaluate(accelerator, model.to(accelerator.device), test.at(prep), inputs=inputs_for(get_spec("none"), prep))
        note = "reused, evaluated"
    train_time = meta_number(meta, "train_time_s", path) if "train_time_s" in meta else None
    fp = state_fingerprint(model.state_dict())  # the file's tensors, as loaded (names, shapes, dtypes, values)
    return {"test_accuracy": acc, "params": count_params(model), "train_time_s": train_time, "note": note,
            "arch": meta_record(meta, path)["spec"], "fingerprint": fp, "input": describe(prep)}


def resolve_teacher(accelerator, cfg, train, test):
    """--teacher PATH, else the run folder's teacher, else train one. Returns (path, info)."""
    path = Path(cfg.run.teacher) if cfg.run.teacher else cfg.run_dir / TEACHER_FILE
    if path.exists() and not cfg.run.teacher:  # the run's own teacher: only if this run's recipe made it
        settings = phase_settings(accelerator, cfg, train, student=False)
        # a reused teacher is re-evaluated when the test set differs: --limit-test may change
        old, same_test = model_stamp(path)[1], {"limit_test": cfg.data.limit_test}
        check_stamp(f"teacher: {path}", old and {**old, **same_test}, {**settings, **same_test},
                    f"rerun with the old values (--teacher-epochs/--teacher-lr/--teacher-schedule/--teacher-augment in distill.py "
                    f"and compare.py), pass --teacher {path} to use it as it is, or use a new --output-dir",
                    explain=settings.explain)
    if path.exists():
        accelerator.print(f"teacher: reusing {path} (no teacher training)")
        return path, teacher_info_from_checkpoint(accelerator, path, test)
    accelerator.print(f"teacher: {path} not found, training it")
    info = train_teacher(accelerator, cfg, train, test, path)
    state, meta = read_checkpoint(path)
    fp = state_fingerprint(state)
    info.update(note="trained" if cfg.teacher.epochs else "used as given (--teacher-epochs 0)", arch=meta.get("arch"),
                fingerprint=fp, input=describe(file_preprocessing(meta, path, train)))
    return path, info


def student_data(cfg, train, soft=None, online=None):
    """(training data, objective) of a student run: `train` is the split decoded for the student
    (train.at(its preprocessing)); the data are what training.fit reads.

    Where the targets come from is chosen once (soft_targets.source_of): hard labels (soft and
    online None), a K-view cache whose view e mod K (parameters and logits) the student replays,
    one stored view's logits (`soft` a cache without view parameters, or a [N, C] tensor), or the
    frozen teacher run on the student's own view (`online`: pipeline.online_view's (teacher,
    inputs)); `soft` may also be a soft_targets source already. With --train-subset N only a
    class-balanced subset keeps its labels: the baseline trains on it alone; a distilled student
    uses soft targets on the subset (--soft-targets subset) or on the whole training set (all, the
    default), its hard loss then masked to the labelled samples."""
    k = cfg.kd
    source = soft if hasattr(soft, "student_views") else source_of(soft, online, cache_views(cfg)[1])
    views = source.student_views(get_spec(cfg.student.augment), stream_seed("student", cfg.run.seed))
    extra, objective = source.columns(), source.objective(k.kd_loss, k.temperature, k.alpha)
    if not cfg.data.train_subset:
        return train.train_data(views, extra), objective
    keep = balanced_subset(train.labels, cfg.data.train_subset)
    if not source.distilled or k.soft_targets == "subset":
        return train.train_data(views, extra).subset(keep), objective
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[keep] = True
    return train.train_data(views, {**extra, "label_mask": mask}), objective


def _finished(accelerator, cfg, label, settings):
    """With --resume, a student phase whose weights (and metrics) were saved with these settings
    is not redone; saved with other settings, it is refused by name."""
    path = cfg.run_dir / f"{label}.safetensors"
    if cfg.run.resume and path.exists():
        _, meta = read_checkpoint(path)
        if "info" in meta:
            check_stamp(f"{label}: {path}", model_stamp(path, meta)[1], settings, RESUME_HINT)
            accelerator.print(f"{label}: already finished in {path}, not retrained (--resume)")
            return json.loads(meta["info"])
    return None


def _save_student(accelerator, cfg, model, record, info, label, settings):
    path = cfg.run_dir / f"{label}.safetensors"
    if accelerator.is_main_process:
        save_model(model, path, "student", record["num_classes"], record=record, info=json.dumps(info),
                   seed=cfg.run.seed, phase=label, settings=json.dumps(settings))
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
    set_seed(cfg.run.seed)
    model, record = build(cfg.student, train, label, accelerator.print)
    spec, prep = get_spec(cfg.student.augment), record["preprocessing"]
    data, objective = student_data(cfg, train.at(prep), soft, online_view(online, spec, record))
    model, hist = fit(accelerator, model, data, test.at(prep), cfg.student, cfg.run, objective, label,
                      cfg.run_dir / "checkpoints" / label, settings, inputs=inputs_for(spec, prep))
    return _save_student(accelerator, cfg, model, record, run_info(model, hist, arch=record["spec"]), label, settings)


def online_view(online, spec, record):
    """(teacher, inputs) for training.online_objective: the online teacher (teaching.
    frozen_teacher) and the input function of its own preprocessing, None where it expects the
    student's input (the student's batch["x"] is reused). None without an online teacher."""
    if online is None:
        return None
    same = describe(online.preprocessing) == describe(record["preprocessing"])
    return online, None if same else inputs_for(spec, online.preprocessing)


def train_fitnet_student(accelerator, cfg, train, test, teacher_path, soft, label, teacher_fp=None, online=None):
    """FitNets: hints from the teacher's block 2 plus KD from the cache. 'two-stage' (the
    paper): kd.hint_epochs of hint regression, then the recipe's epochs of KD; 'joint': the
    recipe's epochs of KD + hint_beta x hint. The teacher runs online (first two blocks, frozen, not DDP-wrapped)."""
    settings = phase_settings(accelerator, cfg, train, teacher_fp=teacher_fp, kd=True, hints=True)
    done = _finished(accelerator, cfg, label, settings)
    if done:
        return done
    teacher, meta = load_model(teacher_path, "teacher")
    check_fitnets(cfg.student.arch, meta_record(meta, teacher_path)["spec"])
    hint = teacher_hint(teacher.to(accelerator.device))
    set_seed(cfg.run.seed)
    model, record = build(cfg.student, train, label, accelerator.print)
    wrapped = FitNetStudent(model)
    spec = get_spec(cfg.student.augment)
    source = source_of(soft, online_view(online, spec, record), cache_views(cfg)[1])
    cols, kd = student_data(cfg, train, source)  # FitNets: the notebook's models on in-memory data
    views = dict(inputs=inputs_for(spec, record["preprocessing"]))
    ckpt, k = cfg.run_dir / "checkpoints" / label, cfg.kd
    if k.hint_mode == "two-stage":
        stage = replace(cfg.student, epochs=k.hint_epochs)
        _, h1 = fit(accelerator, wrapped.hint_stage(), cols, None, stage, cfg.run, hint_objective(hint), f"{label} hints",
                    ckpt / "hints", settings, **views)
        student, h2 = fit(accelerator, wrapped.student, cols, test, cfg.student, cfg.run, kd, label, ckpt / "kd", settings,
                          **views)
        hist = {"epochs": h2["epochs"], "train_time_s": h1["train_time_s"] + h2["train_time_s"]}
        extra = {"hint_epochs": h1["epochs"]}
    else:
        obj = source.feed(joint_objective(hint, k.kd_loss, k.temperature, k.alpha, k.hint_beta))
        wrapped, hist = fit(accelerator, wrapped, cols, test, cfg.student, cfg.run, obj, label, ckpt, settings, **views)
        student, extra = wrapped.student, {}
    info = run_info(student, hist, arch=record["spec"], hint_mode=k.hint_mode, **extra)
    return _save_student(accelerator, cfg, student, record, info, label, settings)
