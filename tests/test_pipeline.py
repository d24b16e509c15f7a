"""End to end on real MNIST (small subset, 1 epoch), in-process so the teacher can be watched."""
import json

import pytest

from kd_accel import models, phases, pipeline, teaching
from kd_accel.cache import read_metadata
from kd_accel.cli import distill_main

from conftest import reset_accelerate_state

ARGS = ["--limit-train", "400", "--limit-test", "200", "--epochs", "1", "--teacher-epochs", "1", "--seed", "3"]


def run(mnist_dir, out, *extra):
    reset_accelerate_state()
    distill_main(["--data-dir", str(mnist_dir), "--output-dir", str(out), *ARGS, *extra])
    return json.loads((out / "metrics.json").read_text())


def test_first_run_misses_second_hits_and_never_calls_teacher(mnist_dir, tmp_path, monkeypatch, capsys, reset_accelerate):
    out = tmp_path / "run"
    first = run(mnist_dir, out)
    assert first["cache"]["hit"] is False
    assert (out / "teacher.safetensors").exists() and (out / "student.safetensors").exists()
    assert (out / "config.json").exists()
    meta = read_metadata(out / "teacher_logits.safetensors")
    assert meta["num_samples"] == "400" and meta["dataset"] == "mnist"
    for role in ("teacher", "student", "baseline"):
        assert 10.0 < first[role]["test_accuracy"] <= 100.0
    assert first["student"]["params"] == 31_562 and first["teacher"]["params"] == 481_214
    capsys.readouterr()

    # second run: any teacher training or forward pass is an error
    def boom(*a, **k):
        raise AssertionError("teacher was run on a cache hit")

    monkeypatch.setattr(models.Teacher, "forward", boom)
    monkeypatch.setattr(phases, "train_teacher", boom)  # resolve_teacher's
    monkeypatch.setattr(teaching, "precompute", boom)
    second = run(mnist_dir, out)
    text = capsys.readouterr().out
    assert second["cache"]["hit"] is True
    assert "cache: hit" in text and "reusing" in text
    assert second["teacher"]["test_accuracy"] == first["teacher"]["test_accuracy"]
    # same seed, same cache: the students are reproduced exactly
    assert second["student"]["test_accuracy"] == first["student"]["test_accuracy"]
    assert second["baseline"]["test_accuracy"] == first["baseline"]["test_accuracy"]


def test_stale_cache_replaced_in_run_dir_but_refused_when_explicit(mnist_dir, tmp_path, reset_accelerate):
    from kd_accel.errors import KDError

    out = tmp_path / "run"
    run(mnist_dir, out, "--no-baseline")
    cache = out / "teacher_logits.safetensors"
    stale = tmp_path / "stale.safetensors"
    stale.write_bytes(cache.read_bytes())
    # a different teacher: retrain into a new run folder, then point it at the old cache
    out2 = tmp_path / "run2"
    with pytest.raises(KDError, match="teacher weights changed"):
        run(mnist_dir, out2, "--no-baseline", "--seed", "4", "--logits", str(stale))
    # the run folder's own cache, made stale by a different subset, is recomputed (and says why); the
    # teacher, trained on 400 samples, is reused only when given explicitly (its stamp says 400)
    again = run(mnist_dir, out, "--no-baseline", "--limit-train", "300", "--teacher", str(out / "teacher.safetensors"))
    assert again["cache"]["hit"] is False
    assert read_metadata(cache)["num_samples"] == "300"
