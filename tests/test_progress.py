"""Progress inside a phase (issue 28): plain lines where stderr is not a terminal, a rich bar where
it is, nothing with --quiet or on other processes; the running loss read (a host sync) no more
often than something is shown; and the trained weights the same either way."""
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file

from kd_accel import cli, reporting
from kd_accel.errors import KDError

TINY = ["--limit-train", "200", "--limit-test", "50", "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "50",
        "--no-baseline"]
LINE = re.compile(r"^(teacher|student) epoch 1/1: [1-4]/4 batches, [\d,]+ img/s, loss \d+\.\d{4}, ETA \d+:\d\d:\d\d$")


def test_plain_lines_quiet_and_the_same_weights(tmp_path, mnist_dir, monkeypatch, capsys):
    """A line per batch ($KD_ACCEL_PROGRESS_EVERY=0) for each training epoch and for the precompute,
    one loss read per line; --quiet prints none of them and trains the very same weights."""
    monkeypatch.setenv("KD_ACCEL_LATENCY_S", "0")
    monkeypatch.setenv(reporting.PROGRESS_ENV, "0")
    reads = []
    monkeypatch.setattr(reporting, "read_loss", lambda loss: reads.append(1) or float(loss()))
    run_main(cli.distill_main, ["--data-dir", mnist_dir, *TINY, "--output-dir", tmp_path / "shown"])
    err = capsys.readouterr().err.splitlines()
    epochs = [line for line in err if " epoch 1/1: " in line and "batches" in line]
    assert len(epochs) == 8 and all(LINE.match(line) for line in epochs), err
    assert "teacher logits: 1/1 batches, 200/200 rows" in "\n".join(err), err
    assert len(reads) == len(epochs)  # one sync per line shown, none for the lines without a loss

    run_main(cli.distill_main, ["--data-dir", mnist_dir, *TINY, "--output-dir", tmp_path / "quiet", "--quiet"])
    assert not [line for line in capsys.readouterr().err.splitlines() if "batches" in line]
    assert len(reads) == len(epochs)
    for name in ("teacher.safetensors", "student.safetensors"):
        shown, quiet = load_file(tmp_path / "shown" / name), load_file(tmp_path / "quiet" / name)
        assert shown.keys() == quiet.keys() and all(torch.equal(shown[k], quiet[k]) for k in shown), name


def test_the_loss_is_read_only_when_shown(monkeypatch, capsys):
    """A fake clock, 0.1 s per step: a line every 1 s reads the loss 10 times in 100 steps (a resumed
    epoch's ETA from the batches it ran), a terminal's bar (redrawn every REFRESH_S) at most once
    per redraw; other processes and --quiet read it never; a bad $KD_ACCEL_PROGRESS_EVERY is one line."""
    now = [0.0]

    def tick():
        now[0] += 0.1
        return now[0]

    monkeypatch.setattr(reporting, "time", SimpleNamespace(monotonic=tick))
    monkeypatch.setattr(reporting, "_quiet", False)  # an earlier in-process run's --quiet
    monkeypatch.setenv(reporting.PROGRESS_ENV, "1")
    calls = []

    def loss():
        calls.append(1)
        return torch.tensor(0.5)

    def run(main=True, tty=False, done=0):
        monkeypatch.setattr(reporting, "interactive", lambda accelerator: tty)
        calls.clear()
        with reporting.progress_bar(SimpleNamespace(is_main_process=main), "teacher epoch 1/1", 100, done) as advance:
            for _ in range(100 - done):
                advance(images=10, loss=loss)
        return len(calls), capsys.readouterr().err

    n, err = run()
    assert 9 <= n == len(err.splitlines()) <= 10, err
    assert "batches, 100 img/s, loss 0.5000, ETA " in err
    # a resumed epoch: its skipped batches count as done, not in the rate (10 batches/s: 40 left, 4 s)
    assert re.match(r"teacher epoch 1/1: 6[01]/100 batches, 100 img/s, loss 0.5000, ETA 0:00:04\n", run(done=50)[1])
    n, _ = run(tty=True)
    assert 0 < n <= 100 * 0.1 / reporting.REFRESH_S
    assert run(main=False) == (0, "")
    reporting.set_quiet(True)
    assert run() == (0, "")
    reporting.set_quiet(False)
    monkeypatch.setenv(reporting.PROGRESS_ENV, "soon")
    with pytest.raises(KDError, match=r"^\$KD_ACCEL_PROGRESS_EVERY must be a number of seconds >= 0, got 'soon'$"):
        run()
