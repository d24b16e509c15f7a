"""Resume and reuse never mix phases or recipes (issue 9): a checkpoint or a finished model file
records its phase, run and settings, and is refused, by name, for anything else; a damaged newest
checkpoint falls back to the newest usable one. In-process; a crash is an exception raised by a
step hook (training.HOOKS.step)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kd_accel import training
from kd_accel.checkpointing import PROGRESS
from kd_accel.cli import distill_main
from kd_accel.config import from_flags, with_flags
from kd_accel.errors import KDError
from kd_accel.models import Student
from kd_accel.pipeline import columns, phase_settings
from kd_accel.training import TrainSpec, fit, make_objective
from kd_accel.data import TensorData
from kd_accel.checkpointing import Checkpointer

from conftest import tiny_split, reset_accelerate_state

# 20 optimizer steps an epoch; checkpoints at 8, 16, 20 (epoch end), 24, 32; the last 3 are kept
ARGS = ["--limit-train", "1000", "--limit-test", "300", "--epochs", "2", "--teacher-epochs", "1",
        "--batch-size", "50", "--checkpoint-every", "8", "--seed", "1"]


class Crash(Exception):
    pass


def run(mnist_dir, out, *extra):
    reset_accelerate_state()
    distill_main(["--data-dir", str(mnist_dir), "--output-dir", str(out), *ARGS, *map(str, extra)])
    return json.loads((out / "metrics.json").read_text())


def crash_at(monkeypatch, spec):
    """Install a step hook that raises Crash right after optimizer step N of a phase ("phase:N")."""
    phase, _, step = spec.rpartition(":")

    def crash(label, global_step):
        if label == phase and global_step == int(step):
            raise Crash(spec)

    monkeypatch.setattr(training.HOOKS, "step", [crash])


def no_crash(monkeypatch):
    monkeypatch.setattr(training.HOOKS, "step", [])


def crashed_run(mnist_dir, out, monkeypatch, spec):
    crash_at(monkeypatch, spec)
    with pytest.raises(Crash):
        run(mnist_dir, out)
    no_crash(monkeypatch)
    monkeypatch.undo()


def same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def whole(mnist_dir, tmp_path_factory):
    """One uninterrupted run: the reference, and a finished run folder to copy."""
    out = tmp_path_factory.mktemp("whole") / "run"
    return out, run(mnist_dir, out)


# -- item 1: --resume PATH belongs to one phase of one run ---------------------------------------

@pytest.mark.slow  # a whole run, crashed and resumed, twice (6-9 s)
@pytest.mark.parametrize("crash,step,pruned", [("student:27", 24, False), ("student:19", 16, True)])
def test_resume_path_resumes_only_its_phase(crash, step, pruned, whole, mnist_dir, tmp_path, monkeypatch, capsys):
    """The README's `--resume runs/x/checkpoints/student/step_N`: the baseline used to continue
    from the student's weights (reported as "hard labels only"), or, once the student had pruned
    step_N, to fail."""
    ref, ref_metrics = whole
    out = tmp_path / "run"
    crashed_run(mnist_dir, out, monkeypatch, crash)
    path = out / "checkpoints" / "student" / f"step_{step:08d}"
    capsys.readouterr()
    metrics = run(mnist_dir, out, "--resume", path)
    text = capsys.readouterr().out
    assert f"student: resumed from {path}" in text
    assert path.exists() != pruned  # the student keeps 20, 24, 32
    assert "baseline: resumed" not in text  # the baseline starts afresh, not from the student's weights
    for name in ("student", "baseline"):
        assert same_weights(ref / f"{name}.safetensors", out / f"{name}.safetensors"), name
        assert metrics[name]["test_accuracy"] == ref_metrics[name]["test_accuracy"]


def test_resume_path_of_another_phase_or_run_is_refused_in_one_line(whole, mnist_dir, tmp_path):
    ref, _ = whole
    baseline_ckpt = ref / "checkpoints" / "baseline" / "step_00000032"
    with pytest.raises(KDError, match=r"phase 'baseline', which distill.py does not run here \(its phases: "
                                      r"teacher, student\)"):
        run(mnist_dir, ref, "--resume", baseline_ckpt, "--no-baseline")
    # a fresh folder: the teacher phase used to load the student's checkpoint (traceback)
    with pytest.raises(KDError, match=r"is a checkpoint of run .* \(phase 'student'\), not of this run"):
        run(mnist_dir, tmp_path / "fresh", "--resume", ref / "checkpoints" / "student" / "step_00000032")
    assert not (tmp_path / "fresh" / "teacher.safetensors").exists()


# -- item 2: settings stamps on checkpoints and finished models ----------------------------------

def test_checkpoint_with_other_settings_is_refused_naming_each(mnist_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    crashed_run(mnist_dir, out, monkeypatch, "student:19")
    with pytest.raises(KDError, match=r"student: checkpoint \S+step_00000016 was made with other settings: "
                                      r"(?=.*lr 0\.001 -> 0\.002)(?=.*temperature 4\.0 -> 2\.0)"
                                      r"(?=.*epochs 2 -> 3).*rerun with the old values"):
        run(mnist_dir, out, "--resume", "latest", "--lr", "0.002", "--temperature", "2", "--epochs", "3")
    # what does not change the math may change: checkpoint cadence
    assert run(mnist_dir, out, "--resume", "latest", "--checkpoint-every", "epoch")


def test_finished_models_with_other_settings_are_not_reused(whole, mnist_dir, tmp_path):
    ref, ref_metrics = whole
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    with pytest.raises(KDError, match=r"student: \S+student.safetensors was made with other settings: "
                                      r"kd_loss hinton -> notebook-mse, temperature 4.0 -> 1.0, alpha 0.9 -> 0.5"):
        run(mnist_dir, out, "--resume", "latest", "--kd-loss", "seed-mse", "--temperature", "1", "--alpha", "0.5")
    # the run folder's teacher is reused without --resume, but only if this run's recipe made it
    with pytest.raises(KDError, match=r"teacher: \S+teacher.safetensors was made with other settings: "
                                      r"(?=.*limit_train 1000 -> 1200).*pass --teacher"):
        run(mnist_dir, out, "--limit-train", "1200")
    with pytest.raises(KDError, match=r"teacher: .* epochs 1 -> 2"):
        run(mnist_dir, out, "--teacher-epochs", "2")
    # an explicit --teacher is an external teacher: used as it is
    assert run(mnist_dir, tmp_path / "other", "--teacher", out / "teacher.safetensors", "--teacher-epochs", "2",
               "--no-baseline")
    # the baseline has no KD settings: a finished baseline is still reused under another T
    (out / "student.safetensors").unlink()
    shutil.rmtree(out / "checkpoints" / "student")  # its checkpoints too: they are stamped T=4
    metrics = run(mnist_dir, out, "--resume", "latest", "--temperature", "2")
    assert metrics["baseline"]["test_accuracy"] == ref_metrics["baseline"]["test_accuracy"]


def test_unstamped_checkpoints_and_models_are_refused(whole, mnist_dir, tmp_path, monkeypatch):
    ref, _ = whole
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    state = load_file(out / "student.safetensors")
    from safetensors import safe_open
    with safe_open(str(out / "student.safetensors"), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("settings", "phase")}
    save_file(state, str(out / "student.safetensors"), metadata=meta)
    with pytest.raises(KDError, match=r"student: \S+student.safetensors predates settings stamps"):
        run(mnist_dir, out, "--resume", "latest")

    out2 = tmp_path / "run2"
    crashed_run(mnist_dir, out2, monkeypatch, "student:19")
    progress = out2 / "checkpoints" / "student" / "step_00000016" / PROGRESS
    old = {k: v for k, v in json.loads(progress.read_text()).items() if k not in ("phase", "run", "settings")}
    progress.write_text(json.dumps(old))
    with pytest.raises(KDError, match=r"student: checkpoint \S+step_00000016 predates settings stamps"):
        run(mnist_dir, out2, "--resume", "latest")
    with pytest.raises(KDError, match=r"step_00000016: this checkpoint predates phase stamps"):
        run(mnist_dir, out2, "--resume", progress.parent)


def test_settings_cover_each_recipe_flag():
    """Every flag the issue names shapes the stamp (of the distilled student)."""
    class Acc:
        num_processes, mixed_precision = 1, "no"

    base, train = from_flags(limit_train=5000), tiny_split(32)
    ref = phase_settings(Acc, base, train, teacher_fp="t", kd=True)
    for name, value in [("lr", 2e-3), ("temperature", 1.0), ("alpha", 0.5), ("epochs", 5), ("batch_size", 64),
                        ("kd_loss", "seed-mse"), ("limit_train", 10000), ("grad_accum", 2), ("seed", 3),
                        ("schedule", "constant"), ("train_subset", 100), ("channels_last", False)]:
        assert phase_settings(Acc, with_flags(base, **{name: value}), train, teacher_fp="t", kd=True) != ref, name
    for name, value in [("checkpoint_every", "epoch"), ("output_dir", "elsewhere"), ("keep_checkpoints", 1),
                        ("resume", "latest")]:
        assert phase_settings(Acc, with_flags(base, **{name: value}), train, teacher_fp="t", kd=True) == ref, name
    assert phase_settings(Acc, base, train, teacher_fp="other", kd=True) != ref


# -- item 3: a damaged newest checkpoint -----------------------------------------------------------

def _fit(accelerator, cfg, ckpt):
    torch.manual_seed(0)
    train = tiny_split(64)
    model, _ = fit(accelerator, Student(), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "s", Checkpointer.of(cfg.run, ckpt, {"lr": cfg.student.lr}))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _damage(step, how):
    if how == "truncated model":
        f = step / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    elif how == "missing model":
        (step / "model.safetensors").unlink()
    elif how == "truncated optimizer":
        f = step / "optimizer.bin"
        f.write_bytes(f.read_bytes()[:-200])
    elif how == "bad progress":
        (step / PROGRESS).write_text('{"epoch": 1,')
    elif how == "progress without keys":
        (step / PROGRESS).write_text("{}")


@pytest.mark.parametrize("how", ["truncated model", "missing model", "truncated optimizer", "bad progress",
                                 "progress without keys"])
def test_damaged_newest_checkpoint_falls_back_to_newest_usable(how, accelerator, tmp_path, monkeypatch, capsys):
    # 8 steps an epoch, 3 epochs; checkpoints every 3 steps, all kept
    cfg = from_flags(epochs=3, batch_size=8, checkpoint_every="3", keep_checkpoints=10, output_dir=str(tmp_path))
    whole = _fit(accelerator, cfg, tmp_path / "whole")
    crash_at(monkeypatch, "s:13")  # checkpoints at 3, 6, 8 (epoch end), 9, 12
    with pytest.raises(Crash):
        _fit(accelerator, cfg, tmp_path / "ckpt")
    no_crash(monkeypatch)
    _damage(tmp_path / "ckpt" / "step_00000012", how)
    capsys.readouterr()
    resumed = _fit(accelerator, with_flags(cfg, resume="latest"), tmp_path / "ckpt")
    text = capsys.readouterr().out
    assert f"s: skipping checkpoint {tmp_path / 'ckpt' / 'step_00000012'}:" in text
    assert "s: resumed from" in text and "step_00000009" in text
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_no_usable_checkpoint_is_one_line(accelerator, tmp_path, monkeypatch):
    cfg = from_flags(epochs=2, batch_size=8, checkpoint_every="3", keep_checkpoints=2, output_dir=str(tmp_path))
    crash_at(monkeypatch, "s:10")  # checkpoints kept: 8, 9
    with pytest.raises(Crash):
        _fit(accelerator, cfg, tmp_path / "ckpt")
    no_crash(monkeypatch)
    _damage(tmp_path / "ckpt" / "step_00000009", "truncated model")
    _damage(tmp_path / "ckpt" / "step_00000008", "bad progress")
    with pytest.raises(KDError, match=r"^s: no usable checkpoint in \S+ \(step_00000009: model.safetensors "
                                      r"truncated.*; step_00000008: progress.json unreadable.*\); delete") as e:
        _fit(accelerator, with_flags(cfg, resume="latest"), tmp_path / "ckpt")
    assert "\n" not in str(e.value)


def test_fresh_phase_removes_its_old_checkpoints(accelerator, tmp_path, capsys):
    """Started afresh (no --resume), a phase clears its checkpoint folder: an earlier run's
    step_00000099 would otherwise be the "latest" a later --resume picks instead of this run's."""
    ckpt = tmp_path / "checkpoints" / "student"
    stale = ckpt / "step_00000099"
    stale.mkdir(parents=True)
    (stale / PROGRESS).write_text("{}")
    train = tiny_split(40)
    cfg = from_flags(epochs=1, batch_size=10, checkpoint_every="2", output_dir=str(tmp_path))
    fit(accelerator, Student(), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "student", Checkpointer.of(cfg.run, ckpt))
    assert not stale.exists()
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000002"]
    assert "removed 1 old checkpoint" in capsys.readouterr().out
