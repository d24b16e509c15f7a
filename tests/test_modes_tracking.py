"""Issue 17, items 7, 9 and 12: every teacher mode runs distill.py end to end (the summary table
included); a tracker that cannot start, and a path whose name is not UTF-8, are one
`kd_accel: error:` line and exit 2, with nothing half-started."""
import json
import os
import re

import pytest
from accelerate import Accelerator
from accelerate.tracking import TensorBoardTracker

from conftest import in_one_results, start_in_one_process
from kd_accel import cli, tracking
from kd_accel.config import GROUPS, flag_fields, setting_choices
from kd_accel.errors import KDError, run_cli

TINY = ["--limit-train", "300", "--limit-test", "200", "--epochs", "2", "--batch-size", "50"]


def one_error_line(stderr):
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kd_accel: error: "), stderr
    return lines[0].removeprefix("kd_accel: error: ")


# ---- item 7: every teacher mode, end to end --------------------------------------------------

# read from the declared setting, so that a new mode is run here too
MODE_VALUES = [([], "cache")] + [(["--augment", "shift", "--teacher-mode", mode], mode)
                                 for mode in setting_choices("kd", "teacher_mode")]
MODES = [pytest.param(extra, mode, id=f"shift-{mode}" if extra else "no-augment") for extra, mode in MODE_VALUES]


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory, mnist_dir, tiny_teacher):
    """distill.py as a user runs it (its imports and its run_cli wrapper), for the `slow` tests
    of this file: each teacher mode (MODES), a tracker folder blocked by a file, an --output-dir
    whose name is not UTF-8. The runs one after another in one process (tests/scripts/in_one.py:
    one interpreter start, 2-3 s, for them all). Returns (their folder, {run: CompletedProcess});
    a mode's run is named by its flags, its folder is <folder>/<its name>."""
    tmp = tmp_path_factory.mktemp("script_runs")
    runs = {mode_run(extra): ("distill.py", ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--output-dir",
                                             tmp / mode_run(extra), *TINY, *extra]) for extra, _ in MODE_VALUES}
    blocked = tmp / "blocked"
    blocked.mkdir()
    (blocked / "tensorboard").write_text("a file where TensorBoard's folder goes")
    runs["blocked"] = ("distill.py", ["--data-dir", mnist_dir, "--teacher", tiny_teacher, "--output-dir", blocked,
                                      *TINY, "--report-to", "tensorboard"])
    runs["not utf8"] = ("distill.py", ["--data-dir", mnist_dir, "--output-dir", os.fsencode(tmp / "runs") + b"/bad\xff",
                                       "--limit-train", "300", "--limit-test", "200", "--teacher-epochs", "1",
                                       "--epochs", "1", "--batch-size", "50"])
    return tmp, dict(zip(runs, in_one_results(start_in_one_process(list(runs.values())))))


def mode_run(extra):
    return " ".join(extra) or "no-augment"


@pytest.mark.slow  # a real process as a user runs it (one for every mode: script_runs)
@pytest.mark.parametrize("extra,mode", MODES)
def test_every_teacher_mode_runs_distill_end_to_end(extra, mode, script_runs):
    out, proc = script_runs[0] / mode_run(extra), script_runs[1][mode_run(extra)]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    text = " ".join(proc.stdout.split())
    assert "distilled student" in text and "baseline" in text and "gain over baseline:" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cache"]["mode"] == mode
    assert (out / "student.safetensors").is_file() and (out / "baseline.safetensors").is_file()
    if "path" in metrics["cache"]:  # the modes that read a cache say which, and whether it was there
        assert "teacher logits cache: miss (" in text  # (the path: folded to the table's width)
    else:
        assert f"teacher: {mode}, no cache" in text


# ---- item 9: a tracker that cannot start -------------------------------------------------------

def test_tracker_folder_blocked_by_a_file_is_refused_in_process(mnist_dir, tiny_teacher, tmp_path, reset_accelerate):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("a file where TensorBoard's folder goes")
    with pytest.raises(KDError, match=re.escape(f"{out}/tensorboard is not a folder")):
        cli.distill_main(["--data-dir", str(mnist_dir), "--teacher", str(tiny_teacher), "--output-dir", str(out), *TINY,
                          "--report-to", "tensorboard"])
    assert [p.name for p in out.iterdir()] == ["tensorboard"]  # nothing else written


@pytest.mark.slow  # a real process (startup ~3 s, shared: script_runs); the in-process test above covers the check
def test_tracker_folder_blocked_by_a_file_is_refused_before_any_work(script_runs):
    out, proc = script_runs[0] / "blocked", script_runs[1]["blocked"]
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == (f"--report-to tensorboard: cannot create the logging folder "
                                           f"{out}/tensorboard/distill/kd_accel: {out}/tensorboard is not a folder")
    assert [p.name for p in out.iterdir()] == ["tensorboard"]  # nothing else written


def test_tracker_whose_start_fails_is_one_line(mnist_dir, tmp_path, monkeypatch, capsys, reset_accelerate):
    def refuses(self):
        raise OSError(30, "Read-only file system", str(tmp_path / "run" / "tensorboard"))

    monkeypatch.setattr(TensorBoardTracker, "start", refuses)
    with pytest.raises(SystemExit) as exited:  # as launch/distill.py runs it
        run_cli(cli.distill_main, ["--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "run"), *TINY,
                                   "--report-to", "tensorboard"])
    assert exited.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"--report-to tensorboard: cannot start the tracker: [Errno 30] Read-only file system: "
        f"'{tmp_path / 'run' / 'tensorboard'}'")
    assert not tracking._OPEN


def test_closing_never_raises_over_the_error_that_stopped_the_run(mnist_dir, tmp_path, monkeypatch,
                                                                   reset_accelerate):
    def stops(*a, **k):
        raise KDError("the error to report")

    def cannot_close(self):
        raise RuntimeError("a tracker that cannot finish")

    monkeypatch.setattr(cli, "load_data", stops)
    monkeypatch.setattr(Accelerator, "end_training", cannot_close)
    with pytest.raises(KDError, match="^the error to report$"):
        cli.distill_main(["--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "run"), *TINY])
    assert not tracking._OPEN


# ---- item 12: path settings whose name is not UTF-8 ----------------------------------------------

# every setting declared path=True, so that a new path setting is checked here too
PATH_FLAGS = sorted({"--" + dest.replace("_", "-") for group in GROUPS for dest, f, _ in flag_fields(group)
                     if f.metadata.get("path")})
BAD = os.fsdecode(b"bad\xff")  # what Linux gives Python for a name that is not UTF-8: 'bad\udcff'


def test_the_path_settings_are_declared():
    assert {"--output-dir", "--run-name", "--data-dir", "--teacher", "--logits", "--out", "--resume"} <= set(PATH_FLAGS)


@pytest.mark.parametrize("flag", PATH_FLAGS)
def test_every_path_setting_not_utf8_is_refused_before_any_work(flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/<run-name> lands here, if anything does
    args = {"--data-dir": str(tmp_path / "no-data"), flag: BAD}
    with pytest.raises(KDError, match="^" + re.escape(f"{flag} {BAD!r} is not valid UTF-8; ")):
        main = cli.precompute_main if flag == "--out" else cli.distill_main  # --out is precompute_logits.py's
        main([x for kv in args.items() for x in kv])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # a real process (startup ~3 s, shared: script_runs); the in-process tests cover the check
def test_output_dir_not_utf8_on_the_command_line(script_runs):
    bad, proc = os.fsencode(script_runs[0] / "runs") + b"/bad\xff", script_runs[1]["not utf8"]
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == (f"--output-dir {os.fsdecode(bad)!r} is not valid UTF-8; kd_accel writes its "
                                           "paths into JSON and safetensors metadata, which need UTF-8: rename it")
    assert not (script_runs[0] / "runs").exists()  # nothing made on the way to it
