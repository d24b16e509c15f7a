"""Bad input: one line on stderr, a non-zero exit, no traceback, nothing written."""
import subprocess
import sys

import pytest

from conftest import run_script


@pytest.mark.parametrize(
    "args,words",
    [
        (["--data-dir", "/nonexistent/kd"], "data dir not found"),
        (["--teacher", "/nonexistent/teacher.safetensors"], "teacher checkpoint not found"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--alpha", "1.5"], "--alpha must be between 0 and 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_input_one_line_error(args, words, tmp_path, mnist_dir):
    out = tmp_path / "run"
    proc = run_script("distill.py", "--data-dir", mnist_dir, "--output-dir", out, *args, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("kd_accel: error:") and words in err, err
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_data_dir_without_files_names_them(tmp_path):
    proc = run_script("train_teacher.py", "--data-dir", tmp_path, "--output-dir", tmp_path / "o", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "missing: train-images-idx3-ubyte" in err, err


def test_corrupt_teacher_checkpoint(tmp_path, mnist_dir):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"not a checkpoint")
    proc = run_script("precompute_logits.py", "--data-dir", mnist_dir, "--teacher", bad,
                      "--out", tmp_path / "c.safetensors", "--limit-train", "10", check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read checkpoint" in proc.stderr
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("script", ["distill.py", "train_teacher.py", "precompute_logits.py"])
def test_help(script):
    proc = run_script(script, "--help")
    assert "--data-dir" in proc.stdout and "--output-dir" in proc.stdout


def test_train_teacher_epochs_default_to_the_teacher_recipe():
    """train_teacher.py's --epochs/--lr/--schedule are the teacher's: their defaults must be the
    teacher recipe distill.py uses, not the (longer) student recipe."""
    import re

    from kd_accel.config import Config

    def default(script, flag):
        text = " ".join(run_script(script, "--help").stdout.split())
        return re.search(rf"{flag} [A-Z_]+ [^\[(]*\(default: ([^)]+)\)", text).group(1)

    assert default("train_teacher.py", "--epochs") == str(Config.teacher_epochs)
    assert default("train_teacher.py", "--lr") == str(Config.teacher_lr)
    assert default("distill.py", "--epochs") == str(Config.epochs)
    assert Config.epochs != Config.teacher_epochs  # else this test could not tell them apart


def test_run_cli_destroys_the_process_group_on_success_and_on_error(tmp_path):
    """A gloo group left to interpreter shutdown can abort a finished rank (SIGABRT, "terminate
    called without an active exception"); run_cli must tear it down on every way out."""
    code = f"""
import sys, torch.distributed as dist
from kd_accel.errors import KDError, run_cli
def main(argv):
    dist.init_process_group("gloo", init_method="file://{tmp_path}/rdzv" + argv[0], rank=0, world_size=1)
    if argv[1] == "fail":
        raise KDError("bad flag")
try:
    run_cli(main, [sys.argv[1], sys.argv[2]])
except SystemExit as e:
    print("exit", e.code)
print("initialized", dist.is_initialized())
"""
    for mode, exit_line in [("ok", ""), ("fail", "exit 2\n")]:
        proc = subprocess.run([sys.executable, "-c", code, mode, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == exit_line + "initialized False\n", proc.stdout
