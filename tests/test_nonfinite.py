"""Non-finite values are never saved: not in a cache, not in weights, not from a flag."""
import re

import pytest
import torch

from conftest import tiny_split
from kd_accel import cli
from kd_accel.config import from_flags
from kd_accel.errors import KDError
from kd_accel.models import build_model, save_model
from kd_accel.pipeline import columns
from kd_accel.teaching import precompute
from kd_accel.study import parse_variant
from kd_accel.training import TrainSpec, fit, make_objective
from kd_accel.data import TensorData
from kd_accel.checkpointing import Checkpointer


def nan_teacher(path):
    torch.manual_seed(0)
    model = build_model("teacher")
    with torch.no_grad():
        # finite weights whose logits are not (a NaN weight is refused where the file is read):
        # one hidden unit overflows to inf on every row
        model.head[1].weight[3] = 3e38
    save_model(model, path, "teacher", 10)
    return path


# --- precompute refuses a teacher whose outputs are not finite -----------------------------------

def test_precompute_refuses_a_nan_teacher_and_writes_nothing(tmp_path, accelerator):
    teacher = nan_teacher(tmp_path / "teacher.safetensors")
    out = tmp_path / "cache" / "teacher_logits.safetensors"
    with pytest.raises(KDError, match=re.escape(f"teacher {teacher} gives non-finite logits for 64 of 64 training")):
        precompute(accelerator, from_flags(), teacher, tiny_split(64), out)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_precompute_counts_rows_not_values(tmp_path, accelerator, monkeypatch):
    from kd_accel import teaching

    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("teacher"), teacher, "teacher", 10)
    real = teaching.predict_rows

    def some_bad_rows(accelerator, model, loader, n, inputs, write, *a, **k):
        def bad_write(idx, logits, *cols):  # rows 5 and 9 of the training set as a broken teacher gives them
            logits = logits.clone()
            logits[idx == 5, :] = float("nan")
            logits[idx == 9, 2] = float("inf")
            write(idx, logits, *cols)

        return real(accelerator, model, loader, n, inputs, bad_write, *a, **k)

    monkeypatch.setattr(teaching, "predict_rows", some_bad_rows)
    with pytest.raises(KDError, match="non-finite logits for 2 of 64 training samples; no cache written"):
        precompute(accelerator, from_flags(), teacher, tiny_split(64), tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


# --- fit never returns or checkpoints non-finite weights ------------------------------------------

def broken_by_the_update(**kw):
    """lr=inf (validation bypassed): the first step's loss is finite, its update is not."""
    return from_flags(epochs=1, batch_size=32, lr=float("inf"), schedule="constant", channels_last=False, **kw)


def test_fit_refuses_weights_broken_on_the_last_step(accelerator):
    train = tiny_split(32)  # one step: the loss watch sees only the finite loss before the update
    with pytest.raises(KDError, match=r"^student: non-finite weights after step 1 \(\d+ tensors, e\.g\. "):
        cfg = broken_by_the_update()
        fit(accelerator, build_model("student"), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "student")


def test_fit_never_checkpoints_non_finite_weights(accelerator, tmp_path):
    train = tiny_split(64)  # two steps, a checkpoint after the first (whose loss was finite)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KDError, match="baseline: non-finite weights after step 1"):
        cfg = broken_by_the_update(checkpoint_every="1")
        fit(accelerator, build_model("student"), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "baseline", Checkpointer.of(cfg.run, ckpt))
    assert not ckpt.exists() or not any(p.name.startswith("step_") for p in ckpt.iterdir())


def test_distill_saves_and_reports_nothing_from_broken_weights(tmp_path, mnist_dir, monkeypatch, reset_accelerate):
    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("teacher"), teacher, "teacher", 10)
    monkeypatch.setattr(cli, "validate", lambda cfg, groups=None: None)  # let --lr inf through, as before the fix
    out = tmp_path / "run"
    with pytest.raises(KDError, match="student: non-finite weights after step 1"):
        cli.distill_main(["--data-dir", str(mnist_dir), "--output-dir", str(out), "--teacher", str(teacher),
                          "--limit-train", "100", "--limit-test", "100", "--batch-size", "100", "--epochs", "1",
                          "--lr", "inf", "--schedule", "constant"])
    assert not (out / "student.safetensors").exists() and not (out / "metrics.json").exists()


# --- flags: non-finite and absurd values are refused up front, by name ----------------------------

@pytest.mark.parametrize("flag,value,words", [
    ("--temperature", "inf", "--temperature must be a finite number, got inf"),
    ("--temperature", "nan", "--temperature must be a finite number, got nan"),
    ("--temperature", "1e-40", "--temperature must be between 0.01 and 1000, got 1e-40"),
    ("--temperature", "5000", "--temperature must be between 0.01 and 1000, got 5000"),
    ("--lr", "inf", "--lr must be a finite number, got inf"),
    ("--lr", "nan", "--lr must be a finite number, got nan"),
    ("--lr", "100", "--lr must be at most 10, got 100"),
    ("--teacher-lr", "-inf", "--teacher-lr must be a finite number, got -inf"),
    ("--teacher-lr", "1e6", "--teacher-lr must be at most 10"),
    ("--alpha", "nan", "--alpha must be a finite number, got nan"),
    ("--hint-beta", "inf", "--hint-beta must be a finite number, got inf"),
    ("--hint-beta", "-1", "--hint-beta must be >= 0, got -1"),
])
def test_non_finite_and_absurd_flags_are_refused_by_name(tmp_path, flag, value, words):
    out = tmp_path / "run"
    with pytest.raises(KDError) as e:
        cli.distill_main(["--output-dir", str(out), f"{flag}={value}"])
    assert str(e.value) == words or str(e.value).startswith(words), str(e.value)
    assert "\n" not in str(e.value) and not out.exists()


@pytest.mark.parametrize("spec", ["hinton:T=inf", "hinton:T=nan", "hinton:T=1e-40", "hinton:alpha=nan",
                                  "fitnets:mode=joint,beta=inf", "fitnets:mode=joint,beta=-1"])
def test_non_finite_variants_are_refused(spec):
    with pytest.raises(KDError, match="bad variant"):
        parse_variant(spec, from_flags())
