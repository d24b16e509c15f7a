"""Files: a finished result keeps its config, a cache never lands on a non-cache, a killed writer's
temporaries are cleaned by the next write, and outputs get the mode the umask allows."""
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from kd_accel import cli
from kd_accel.cache import CacheKey, read_metadata, save_cache
from kd_accel.errors import KDError
from kd_accel.io import atomic_path, write_json
from kd_accel.models import build_model, save_model

SMALL = ["--limit-train", "100", "--limit-test", "100", "--epochs", "1", "--teacher-epochs", "1"]
KEY = CacheKey("mnist", "train", 4, 10, "t", "d")


@pytest.fixture(autouse=True)
def _fresh_state(reset_accelerate):
    yield


def random_teacher(path):
    torch.manual_seed(0)
    save_model(build_model("teacher"), path, "teacher", 10)
    return path


# --- a failed run leaves a finished result's config alone -------------------------------------

@pytest.mark.parametrize("main,config", [
    (cli.distill_main, "config.json"),
    (cli.train_teacher_main, "config.train_teacher.json"),
    (cli.precompute_main, "config.precompute_logits.json"),
])
def test_failed_run_keeps_the_finished_runs_config(tmp_path, mnist_dir, monkeypatch, main, config):
    out = tmp_path / "run"
    out.mkdir()
    finished = {"config": json.dumps({"seed": 0, "epochs": 20}), "metrics.json": json.dumps({"test_accuracy": 99.0})}
    (out / config).write_text(finished["config"])
    (out / "metrics.json").write_text(finished["metrics.json"])

    def fails_after_startup(*a, **k):
        raise KDError("boom after start-up")

    monkeypatch.setattr(cli, "load_data", fails_after_startup)
    extra = ["--teacher", str(random_teacher(tmp_path / "t.safetensors"))] if main is cli.precompute_main else []
    with pytest.raises(KDError, match="boom"):
        main(["--data-dir", str(mnist_dir), "--output-dir", str(out), "--seed", "7", *extra])
    assert (out / config).read_text() == finished["config"]
    assert (out / "metrics.json").read_text() == finished["metrics.json"]


def test_distill_failing_half_way_keeps_the_previous_result_whole(tmp_path, mnist_dir, monkeypatch, tiny_teacher):
    """A finished run folder, re-run afresh; the new run trains its student, then fails in the
    baseline: the old result (metrics, config and both students) is kept together in previous/,
    and no metrics.json sits beside the new student."""
    out = tmp_path / "run"
    args = ["--data-dir", str(mnist_dir), "--output-dir", str(out), "--limit-train", "200", "--limit-test", "100",
            "--epochs", "1", "--teacher", str(tiny_teacher)]
    cli.distill_main(args)
    (out / "export").mkdir()  # as distill.py --export leaves it: made from the old student, set aside with it
    (out / "export" / "student.onnx").write_bytes(b"the old student's")
    old = {n: (out / n).read_bytes() for n in ("metrics.json", "config.json", "student.safetensors",
                                               "baseline.safetensors", "export/student.onnx")}
    real = cli.train_student

    def baseline_fails(accelerator, cfg, train, test, logits, label, *rest):
        if label == "baseline":
            raise KDError("boom in the baseline")
        return real(accelerator, cfg, train, test, logits, label, *rest)

    monkeypatch.setattr(cli, "train_student", baseline_fails)
    with pytest.raises(KDError, match="boom"):
        cli.distill_main([*args, "--alpha", "0.5"])
    assert {n: (out / "previous" / n).read_bytes() for n in old} == old
    assert not (out / "metrics.json").exists() and not (out / "baseline.safetensors").exists()
    assert not (out / "export").exists()
    assert (out / "student.safetensors").read_bytes() != old["student.safetensors"]  # the new run's


def test_finished_precompute_writes_its_config(tmp_path, mnist_dir):
    teacher = random_teacher(tmp_path / "t.safetensors")
    cli.precompute_main(["--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "run"), "--teacher",
                         str(teacher), "--limit-train", "50"])
    assert json.loads((tmp_path / "run" / "config.precompute_logits.json").read_text())["data"]["limit_train"] == 50
    assert read_metadata(tmp_path / "run" / "teacher_logits.safetensors")["num_samples"] == "50"


# --- precompute --out never overwrites what is not a cache --------------------------------------

def precompute(mnist_dir, teacher, out, *extra):
    cli.precompute_main(["--data-dir", str(mnist_dir), "--teacher", str(teacher), "--out", str(out),
                         "--limit-train", "50", *extra])


def test_out_equal_to_teacher_is_refused(tmp_path, mnist_dir):
    teacher = random_teacher(tmp_path / "t.safetensors")
    before = teacher.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(teacher)
    for out in (teacher, tmp_path / "link.safetensors", tmp_path / "." / "t.safetensors"):
        with pytest.raises(KDError, match="is --teacher .*, which this run reads"):
            precompute(mnist_dir, teacher, out)
    assert teacher.read_bytes() == before


@pytest.mark.parametrize("what", ["checkpoint", "text", "folder"])
def test_out_over_a_non_cache_is_refused(tmp_path, mnist_dir, what):
    teacher = random_teacher(tmp_path / "t.safetensors")
    out = tmp_path / "target"
    if what == "checkpoint":
        save_model(build_model("student"), out, "student", 10)
    elif what == "text":
        out.write_text("my notes\n")
    else:
        out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    content = out.read_bytes() if out.is_file() else None
    with pytest.raises(KDError, match="is a folder" if what == "folder" else "is not a kd_accel teacher-logits cache"):
        precompute(mnist_dir, teacher, out, "--output-dir", str(tmp_path / "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, nothing else written
    if content is not None:
        assert out.read_bytes() == content


def test_out_over_an_old_cache_is_replaced(tmp_path, mnist_dir):
    teacher = random_teacher(tmp_path / "t.safetensors")
    out = tmp_path / "c.safetensors"
    save_cache(out, torch.zeros(4, 10), torch.zeros(4), KEY)
    precompute(mnist_dir, teacher, out)
    assert read_metadata(out)["num_samples"] == "50"


# --- temporaries: a killed writer's are removed by the next write; ours never stay ---------------

KILLED_WRITER = """
import os, signal, sys, torch
from safetensors.torch import save_file
from kd_accel.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    save_file({"x": torch.zeros(1000)}, str(tmp))
    os.kill(os.getpid(), signal.SIGKILL)  # as if killed before the rename
"""


def test_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "teacher_logits.safetensors"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=ROOT)
    assert proc.returncode == -9
    assert not target.exists() and list(tmp_path.iterdir()), "the killed writer left nothing to clean"
    save_cache(target, torch.zeros(4, 10), torch.zeros(4), KEY)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path):
    target = tmp_path / "metrics.json"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = tmp_path / f".metrics.json.{host}.{gone.stdout.strip()}.abcd0123.tmp"
    live = tmp_path / f".metrics.json.{host}.{os.getpid()}.abcd0123.tmp"  # a concurrent writer: us
    remote = tmp_path / f".metrics.json.other-node.example.{gone.stdout.strip()}.abcd0123.tmp"
    other = tmp_path / f".results.json.{host}.{gone.stdout.strip()}.abcd0123.tmp"  # another target
    for d in (dead, live, remote, other):
        d.mkdir()
        (d / "x").write_text("partial")
    write_json(target, {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, remote.name, other.name])


def test_a_failed_write_removes_its_own_temporary(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"] and target.read_text() == "old\n"


# --- outputs respect the umask ---------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_the_umask_allows(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_cache(tmp_path / "sub" / "c.safetensors", torch.zeros(4, 10), torch.zeros(4), KEY)
        write_json(tmp_path / "m.json", {})
        save_model(build_model("student"), tmp_path / "s.safetensors", "student", 10)
    finally:
        os.umask(old)
    for name in ("sub/c.safetensors", "m.json", "s.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~mask
