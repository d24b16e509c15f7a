"""Two runs on one output folder (issue 17, item 4): a run holds its folder (kd_accel/runlock.py);
a second run is refused in one line naming the holder, before it touches anything; the lock goes
on every way out, and a SIGKILLed run's lock is taken again by --resume latest."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from kd_accel import runlock, training
from kd_accel.errors import KDError
from kd_accel.runlock import LOCK_NAME, hold_run_folder, release

from conftest import ROOT, launch_cmd, reset_accelerate_state, run_script

PAUSE = ROOT / "tests" / "scripts" / "pause.py"  # runs a launch script that waits mid-training
FAULT = ROOT / "tests" / "scripts" / "fault.py"  # runs a launch script with a SIGKILL step hook
TINY = ["--limit-train", "300", "--limit-test", "200", "--epochs", "2", "--batch-size", "50"]

# Holds a folder in another process: "held" once it does, releases on its first input line.
HOLDER = """
import sys
from kd_accel.runlock import hold_run_folder, release
hold_run_folder(sys.argv[1], "train_teacher")
print("held", flush=True)
sys.stdin.readline()
release()
print("released", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def released():
    yield
    release()  # a failed test never leaves this process holding a folder


def distill_args(mnist_dir, teacher, out, *extra):
    return ["--data-dir", mnist_dir, "--teacher", teacher, "--output-dir", out, *TINY, *extra]


def refusal(out, pid, script="distill.py"):
    """The start of the one line a refused run prints."""
    return f"kd_accel: error: {out} is in use by another run: {script} (pid {pid} on {socket.gethostname()}, started "


def error_lines(stderr):
    return [line for line in stderr.splitlines() if "kd_accel: error:" in line]


def snapshot(folder):
    """Every file under `folder`, with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# -- unit: the lock itself ------------------------------------------------------------------------

def test_second_holder_is_refused_until_the_first_releases(tmp_path):
    with holder(tmp_path) as other:
        with pytest.raises(KDError) as e:
            hold_run_folder(tmp_path, "distill")
        assert str(e.value).startswith(refusal(tmp_path, other.pid, "train_teacher.py")[len("kd_accel: error: "):])
        assert str(e.value).endswith("; wait for it to finish, or use another --output-dir"), e.value
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.stdout.readline() == "released\n"
        assert not (tmp_path / LOCK_NAME).exists()  # released: the folder holds only what the run wrote
        hold_run_folder(tmp_path, "distill")  # the other process is still alive
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert hold_run_folder(tmp_path, "distill") == tmp_path.resolve() / LOCK_NAME  # held already: no conflict
    release()
    assert list(tmp_path.iterdir()) == []


def test_lock_of_a_sigkilled_holder_is_taken_again(tmp_path):
    with holder(tmp_path) as other:
        other.send_signal(signal.SIGKILL)
        other.wait()
        dead = json.loads((tmp_path / LOCK_NAME).read_text())
    assert dead["pid"] == other.pid and dead["script"] == "train_teacher.py"  # the file outlives it ...
    hold_run_folder(tmp_path, "distill")  # ... the lock does not
    now = json.loads((tmp_path / LOCK_NAME).read_text())
    assert now["pid"] == os.getpid() and now["script"] == "distill.py"


def test_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", unsupported)
    assert hold_run_folder(tmp_path, "distill") is None
    err = capsys.readouterr().err
    assert err == (f"kd_accel: warning: cannot lock {tmp_path} ({os.strerror(errno.ENOLCK)}); a second run started "
                   "on this folder would not be refused\n")
    assert list(tmp_path.iterdir()) == []


# -- released on every way out of a script (in-process) --------------------------------------------

class Crash(Exception):
    pass


@pytest.mark.parametrize("way_out", [None, Crash, KDError, KeyboardInterrupt])
def test_every_way_out_releases_the_folder(way_out, tmp_path, mnist_dir, tiny_teacher, monkeypatch):
    from kd_accel.cli import distill_main

    out = tmp_path / "run"
    seen = []

    def during_training(label, step):
        if not seen:
            seen.append(json.loads((out / LOCK_NAME).read_text())["pid"])
            if way_out:
                raise way_out("stop")

    monkeypatch.setattr(training.HOOKS, "step", [during_training])
    reset_accelerate_state()
    try:
        if way_out:
            with pytest.raises(way_out):
                distill_main(list(map(str, distill_args(mnist_dir, tiny_teacher, out))))
        else:
            distill_main(list(map(str, distill_args(mnist_dir, tiny_teacher, out))))
    finally:
        reset_accelerate_state()
    assert seen == [os.getpid()]  # held while it trained
    assert not (out / LOCK_NAME).exists()
    with holder(out):  # and free for another process
        pass


# -- end to end ------------------------------------------------------------------------------------

@contextmanager
def paused_run(tmp_path, args, nproc=1):
    """distill.py (through tests/scripts/pause.py) paused after student step 2; yields (process,
    pid of its rank 0, control folder); touch <control>/go to let it finish."""
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    log = open(tmp_path / "paused_run.log", "w")
    cmd, env = launch_cmd(PAUSE, ["student:2", ctl, "--", ROOT / "launch" / "distill.py", *args], nproc)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (ctl / "paused.0").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "paused_run.log").read_text()
            time.sleep(0.1)
        yield proc, int((ctl / "paused.0").read_text()), ctl
    finally:
        (ctl / "go").touch()
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


@pytest.mark.slow
def test_second_run_on_a_busy_folder_is_refused_and_the_first_finishes(tmp_path, mnist_dir, tiny_teacher, capsys):
    """Both used to exit 0: the second's fresh start deleted the first's checkpoints and its
    results overwrote the first's. The second: distill.py's run_cli in this process (another
    process than the first's; a refused run as its own process: the two-process test below)."""
    from kd_accel.cli import distill_main
    from kd_accel.errors import run_cli

    out = tmp_path / "run"
    args = distill_args(mnist_dir, tiny_teacher, out, "--checkpoint-every", "2")
    with paused_run(tmp_path, args) as (first, pid, _):
        before = snapshot(out)
        start = time.monotonic()
        capsys.readouterr()
        reset_accelerate_state()
        try:
            with pytest.raises(SystemExit) as exited:
                run_cli(distill_main, list(map(str, args)))
        finally:
            reset_accelerate_state()
        second = capsys.readouterr()
        took = time.monotonic() - start
        assert exited.value.code == 2, second.out + second.err
        (line,) = error_lines(second.err)
        assert line.startswith(refusal(out, pid)) and second.err == line + "\n", second.err
        assert "teacher:" not in second.out, second.out  # refused before any work
        assert snapshot(out) == before  # nothing of the first run moved, written or deleted
        assert took < 60, took
    assert first.returncode == 0, (tmp_path / "paused_run.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["test_accuracy"] > 0 and metrics["baseline"]["test_accuracy"] > 0
    assert (out / "student.safetensors").exists() and (out / "baseline.safetensors").exists()
    assert not (out / "previous").exists() and not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_after_sigkill_is_not_refused(tmp_path, mnist_dir, tiny_teacher, capsys):
    from kd_accel.cli import distill_main

    from conftest import run_main

    out = tmp_path / "run"
    args = distill_args(mnist_dir, tiny_teacher, out, "--checkpoint-every", "2")
    cmd, _ = launch_cmd(FAULT, ["student:3", "--", ROOT / "launch" / "distill.py", *args], 1)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert (out / LOCK_NAME).exists()  # stale: its process is gone, and with it the lock
    capsys.readouterr()
    run_main(distill_main, [*args, "--resume", "latest"])  # in this process: no 2-3 s start
    resumed = capsys.readouterr().out
    assert "student: resumed from" in resumed, resumed
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_process_runs_hold_and_are_refused_as_one(tmp_path, mnist_dir, tiny_teacher):
    """The ranks of one run do not refuse each other (only rank 0 locks); a refused two-process
    run ends at once with the one line (rank 0 exits 2, the launcher stops rank 1)."""
    out = tmp_path / "run"
    args = distill_args(mnist_dir, tiny_teacher, out)
    with paused_run(tmp_path, args, nproc=2) as (first, pid, _):
        start = time.monotonic()
        second = run_script("distill.py", *args, nproc=2, check=False)
        took = time.monotonic() - start
        lost = "kd_accel: error: [rank 1] lost contact with another process, which stopped first (see its error above)"
        lines = error_lines(second.stderr)
        assert lines[0].startswith(refusal(out, pid)) and lines[1:] in ([], [lost]), second.stderr
        assert second.returncode == 1 and "exitcode  : 2" in second.stderr, second.stderr  # the launcher's report
        assert took < 90, took
    assert first.returncode == 0, (tmp_path / "paused_run.log").read_text()
    assert json.loads((out / "metrics.json").read_text())["environment"]["processes"] == 2
    assert not (out / LOCK_NAME).exists()


def test_a_foreign_file_named_like_the_lock_is_kept(tmp_path, mnist_dir, tiny_teacher):
    """The lock is an output like the others (outputs.check): a user's file under its name is
    refused and left byte for byte; the details a killed run left there are taken over."""
    from kd_accel.cli import distill_main

    from conftest import run_main

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("my notes\n")
    with pytest.raises(KDError, match=r"\.kd_accel\.lock \(in --output-dir\) exists and is not a kd_accel run lock"):
        run_main(distill_main, distill_args(mnist_dir, tiny_teacher, out))
    assert (out / LOCK_NAME).read_text() == "my notes\n"
    (out / LOCK_NAME).write_text(json.dumps({"script": "distill.py", "pid": 1, "host": "h", "started": "t"}) + "\n")
    run_main(distill_main, distill_args(mnist_dir, tiny_teacher, out))
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()
