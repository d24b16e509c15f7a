"""The experiment's phases: the teacher (trained, given as weights, or reused) and the students
(distilled from wherever their soft targets come from, soft_targets.py, or the baseline on
hard labels; FitNets' hint stages), each trained by training.fit under its stamped settings and
saved with its metrics."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from accelerate.utils import set_seed

from .augment import get_spec, recipe_spec, stream_seed
from .checkpointing import RESUME_HINT, Checkpointer, check_stamp
from .data import balanced_subset
from .errors import KDError
from .evaluation import evaluate
from .hints import FitNetStudent, hint_objective, joint_objective, teacher_hint
from .losses import loss_settings
from .models import count_params, load_model, meta_number, meta_record, meta_role, read_checkpoint, save_model, state_fingerprint
from .models.preprocessing import describe
from .preflight import check_teacher_classes
from .roles import build, check_fitnets, file_preprocessing, inputs_for
from .runfolder import TEACHER_FILE
from .soft_targets import own_views, source_of
from .stamps import model_stamp, phase_settings
from .teaching import cache_views
from .training import Objective, TrainSpec, fit, make_objective

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from .augment import AugmentSpec
    from .config import Config
    from .data import DataSource, TrainData


def columns(split: DataSource, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """An in-memory split's columns, with `extra` ones (benchmarks, tests: data.TensorData of them
    is what training.fit reads)."""
    return {"images": split.images, "labels": split.labels, **extra}


def run_info(model: nn.Module, hist: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What metrics.json records of a trained model: final accuracy, size, time, history."""
    return {"test_accuracy": hist["epochs"][-1]["test_accuracy"], "params": count_params(model),
            "train_time_s": hist["train_time_s"], "epochs": hist["epochs"], **extra}


def train_teacher(accelerator: Accelerator, cfg: Config, train: DataSource, test: DataSource,
                  path: Path) -> dict[str, Any]:
    """Train the teacher (recipe cfg.teacher) on hard labels and save it, with its test accuracy,
    to `path`."""
    set_seed(cfg.run.seed)
    settings = phase_settings(accelerator, cfg, train, student=False)
    model, record = build(cfg.teacher, train, "teacher", accelerator.print)
    spec, prep = recipe_spec(cfg.teacher), record["preprocessing"]  # with --teacher-mix: mixed views
    inputs = inputs_for(spec, prep)
    if cfg.teacher.epochs == 0:  # --teacher-weights as they are: evaluated, recorded, stamped
        start = time.perf_counter()
        acc = evaluate(accelerator, model.to(accelerator.device), test.at(prep), inputs=inputs)
        hist = {"epochs": [{"epoch": 0, "test_accuracy": acc}], "train_time_s": 0.0}
        accelerator.print(f"teacher: {cfg.teacher.weights} used as it is (--teacher-epochs 0): {acc:.2f}% test "
                          f"accuracy, evaluated in {time.perf_counter() - start:.1f}s")
    else:
        data = train.at(prep).train_data(own_views(spec, stream_seed("teacher", cfg.run.seed)))
        ckpt = Checkpointer.of(cfg.run, cfg.run_dir / "checkpoints" / "teacher", settings)
        model, hist = fit(accelerator, model, data, test.at(prep), TrainSpec.of(cfg.teacher, cfg.run),
                          make_objective("ce", label_smoothing=cfg.teacher.label_smoothing),
                          "teacher", ckpt, inputs=inputs)
    info = run_info(model, hist)
    if accelerator.is_main_process:
        save_model(model, path, "teacher", train.num_classes, record=record, dataset=cfg.data.dataset,
                   test_accuracy=info["test_accuracy"], test_fingerprint=test.fingerprint(),
                   params=info["params"], train_time_s=info["train_time_s"], seed=cfg.run.seed,
                   phase="teacher", settings=json.dumps(settings))
    accelerator.wait_for_everyone()
    return info


def teacher_info_from_checkpoint(accelerator: Accelerator, path: Path | str, test: DataSource) -> dict[str, Any]:
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


def resolve_teacher(accelerator: Accelerator, cfg: Config, train: DataSource,
                    test: DataSource) -> tuple[Path, dict[str, Any]]:
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


def student_data(cfg: Config, train: DataSource, soft: Any = None,
                 online: tuple | None = None) -> tuple[TrainData, Objective]:
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
    views = source.student_views(recipe_spec(cfg.student), stream_seed("student", cfg.run.seed))
    extra = source.columns()
    if source.distilled and cfg.student.mix != "none" and cfg.student.mix_labels == "none":
        extra = {**extra, "label_mask": torch.zeros(len(train), dtype=torch.bool)}  # mixed images: no hard term
    objective = source.objective(k.kd_loss, k.temperature, k.alpha, cfg.student.label_smoothing, **loss_settings(k))
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


def train_student(accelerator: Accelerator, cfg: Config, train: DataSource, test: DataSource, soft: Any, label: str,
                  teacher_fp: Any = None, online: nn.Module | None = None,
                  hints_from: Path | str | None = None) -> dict[str, Any]:
    """A student: distilled when soft targets are given (`soft`: cache.SoftTargets or a [N, C]
    tensor; or `online`: the frozen teacher, run on each batch; soft_targets.source_of chooses
    once), the baseline (hard labels) if neither; with `hints_from` (a teacher file) a FitNets
    student, whose objective adds hints from that teacher's block 2 (fitnet_training). All start
    from the same seed, so they differ only in the loss. Saves <run>/<label>.safetensors with its
    metrics; with --resume, a finished phase is not redone. `teacher_fp`: the weight fingerprint
    of the teacher behind the soft targets (stamped)."""
    hints = hints_from is not None
    kd = soft is not None or online is not None or hints
    settings = phase_settings(accelerator, cfg, train, teacher_fp=teacher_fp, kd=kd, hints=hints)
    done = _finished(accelerator, cfg, label, settings)
    if done:
        return done
    hint = fitnet_hint(accelerator, cfg, hints_from) if hints else None
    set_seed(cfg.run.seed)
    model, record = build(cfg.student, train, label, accelerator.print)
    spec, prep = get_spec(cfg.student.augment), record["preprocessing"]
    source = source_of(soft, online_view(online, spec, record), cache_views(cfg)[1])
    data, objective = student_data(cfg, train.at(prep), source)
    ckpt, inputs = cfg.run_dir / "checkpoints" / label, inputs_for(spec, prep)
    if hint is None:
        model, hist = fit(accelerator, model, data, test.at(prep), TrainSpec.of(cfg.student, cfg.run), objective, label,
                          Checkpointer.of(cfg.run, ckpt, settings), inputs=inputs)
        info = run_info(model, hist, arch=record["spec"])
    else:
        model, hist, extra = fitnet_training(accelerator, cfg, model, data, test.at(prep), source, objective, hint,
                                             label, ckpt, settings, inputs)
        info = run_info(model, hist, arch=record["spec"], hint_mode=cfg.kd.hint_mode, **extra)
    return _save_student(accelerator, cfg, model, record, info, label, settings)


def online_view(online: nn.Module | None, spec: AugmentSpec, record: dict[str, Any]
                ) -> tuple[nn.Module, Callable[[dict], torch.Tensor] | None] | None:
    """(teacher, inputs) for training.online_objective: the online teacher (teaching.
    frozen_teacher) and the input function of its own preprocessing, None where it expects the
    student's input (the student's batch["x"] is reused). None without an online teacher."""
    if online is None:
        return None
    same = describe(online.preprocessing) == describe(record["preprocessing"])
    return online, None if same else inputs_for(spec, online.preprocessing)


def fitnet_hint(accelerator: Accelerator, cfg: Config, teacher_path: Path | str) -> nn.Module:
    """FitNets' hint: the teacher file's first two blocks (frozen, not DDP-wrapped), for a student
    architecture FitNets pairs with it (roles.check_fitnets)."""
    teacher, meta = load_model(teacher_path, "teacher")
    check_fitnets(cfg.student.arch, meta_record(meta, teacher_path)["spec"])
    return teacher_hint(teacher.to(accelerator.device))


def fitnet_training(accelerator: Accelerator, cfg: Config, model: nn.Module, data: TrainData, test: DataSource,
                    source: Any, objective: Objective, hint: nn.Module, label: str, ckpt: Path,
                    settings: Any, inputs: Callable[[dict], torch.Tensor]) -> tuple[nn.Module, dict, dict]:
    """FitNets' training of `model` (FitNets 1412.6550): 'two-stage' (the paper): kd.hint_epochs of
    hint regression (the student's first block against the teacher's, through a regressor),
    then the recipe's epochs of `objective` (KD); 'joint': the recipe's epochs of KD + hint_beta x
    hint, the teacher's logits fed the soft-target source's way. Returns (student, history, what
    metrics.json adds)."""
    wrapped, k, spec = FitNetStudent(model), cfg.kd, TrainSpec.of(cfg.student, cfg.run)
    if k.hint_mode == "two-stage":
        stage = TrainSpec.of(replace(cfg.student, epochs=k.hint_epochs), cfg.run)
        _, h1 = fit(accelerator, wrapped.hint_stage(), data, None, stage, hint_objective(hint), f"{label} hints",
                    Checkpointer.of(cfg.run, ckpt / "hints", settings), inputs=inputs)
        student, h2 = fit(accelerator, wrapped.student, data, test, spec, objective, label,
                          Checkpointer.of(cfg.run, ckpt / "kd", settings), inputs=inputs)
        hist = {"epochs": h2["epochs"], "train_time_s": h1["train_time_s"] + h2["train_time_s"]}
        return student, hist, {"hint_epochs": h1["epochs"]}
    joint = joint_objective(hint, objective, k.hint_beta)  # the KD objective, fed its soft targets as it is
    wrapped, hist = fit(accelerator, wrapped, data, test, spec, joint, label, Checkpointer.of(cfg.run, ckpt, settings),
                        inputs=inputs)
    return wrapped.student, hist, {}
