"""Bad input: one line on stderr, a non-zero exit, no traceback, nothing written.

Checked in-process through run_cli (what every launch script calls), so no Python is spawned per
case; each launch script is still run once as a user runs it (--help, and a bad flag)."""
import re

import pytest
import torch.distributed as dist

from conftest import cli_error, in_one_results, start_in_one_process
from kd_accel import cli
from kd_accel.config import TEACHER, Recipe
from kd_accel.errors import KDError, run_cli

SCRIPTS = {  # launch script -> (its main, a bad flag, the words of its one error line)
    "distill.py": (cli.distill_main, ["--temperature", "0"], "--temperature must be between 0.01 and 1000, got 0"),
    "train_teacher.py": (cli.train_teacher_main, ["--epochs", "0"], "--epochs 0 uses the teacher as --weights give it"),
    "precompute_logits.py": (cli.precompute_main, [], "needs --teacher PATH"),
    "compare.py": (cli.compare_main, ["--variants", "mse"], "bad variant 'mse'"),
    "inspect_logits.py": (cli.inspect_main, ["x.safetensors", "--temperatures", "0"], "--temperatures must be"),
}


@pytest.mark.parametrize(
    "args,words",
    [
        (["--data-dir", "/nonexistent/kd"], "data dir not found"),
        (["--teacher", "/nonexistent/teacher.safetensors"], "teacher checkpoint not found"),
        (["--temperature", "0"], "--temperature must be between 0.01 and 1000, got 0"),
        (["--alpha", "1.5"], "--alpha must be between 0 and 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_input_one_line_error(args, words, tmp_path, mnist_dir, capsys, reset_accelerate):
    out = tmp_path / "run"
    err = cli_error(cli.distill_main, ["--data-dir", mnist_dir, "--output-dir", out, *args], capsys)
    assert words in err, err
    assert not out.exists()


def test_data_dir_without_files_names_them(tmp_path, capsys, reset_accelerate):
    err = cli_error(cli.train_teacher_main, ["--data-dir", tmp_path, "--output-dir", tmp_path / "o"], capsys)
    assert "missing: train-images-idx3-ubyte" in err, err


def test_corrupt_teacher_checkpoint(tmp_path, mnist_dir, capsys, reset_accelerate):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"not a checkpoint")
    err = cli_error(cli.precompute_main, ["--data-dir", mnist_dir, "--teacher", bad, "--out", tmp_path / "c.safetensors",
                                          "--limit-train", "10"], capsys)
    assert "cannot read checkpoint" in err, err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_bad_flag_of_each_script(script, capsys, reset_accelerate):
    main, argv, words = SCRIPTS[script]
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:"), out
    assert script == "inspect_logits.py" or "--data-dir" in out and "--output-dir" in out, out
    assert words in cli_error(main, argv, capsys)


def run_launch_scripts():
    """Every launch script as a real process (its imports and its run_cli wrapper), all started
    at once, each run with --help and then with its bad flag, in one process per script
    (tests/scripts/in_one.py). Returns {script: (--help's CompletedProcess, the bad flag's)}."""
    procs = {script: start_in_one_process([(script, ["--help"]), (script, SCRIPTS[script][1])],
                                          env={"OMP_NUM_THREADS": "1"}) for script in SCRIPTS}
    return {script: in_one_results(proc, timeout=300) for script, proc in procs.items()}


@pytest.mark.slow  # a process per launch script (each imports torch): 6-10 s
def test_launch_scripts_help_and_refuse_a_bad_flag_in_one_line():
    for script, (helped, bad) in run_launch_scripts().items():
        assert helped.returncode == 0 and helped.stdout.startswith("usage:") and script in helped.stdout, (script, helped)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1, (script, bad)
        assert lines[0].startswith("kd_accel: error:") and SCRIPTS[script][2] in lines[0], (script, bad)


def test_train_teacher_epochs_default_to_the_teacher_recipe(capsys):
    """train_teacher.py's --epochs/--lr/--schedule are the teacher's: their defaults must be the
    teacher recipe distill.py uses, not the (longer) student recipe."""
    def default(main, flag):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        return re.search(rf"{flag} [A-Z_]+ [^\[(]*\(default: ([^)]+)\)", text).group(1)

    assert default(cli.train_teacher_main, "--epochs") == str(TEACHER.epochs)
    assert default(cli.train_teacher_main, "--lr") == str(TEACHER.lr)
    assert default(cli.train_teacher_main, "--batch-size") == str(Recipe().batch_size)  # follows the students'
    assert default(cli.distill_main, "--epochs") == str(Recipe().epochs)
    assert Recipe().epochs != TEACHER.epochs  # else this test could not tell them apart


@pytest.mark.parametrize("fails", [False, True])
def test_run_cli_destroys_the_process_group_on_success_and_on_error(tmp_path, fails):
    """A gloo group left to interpreter shutdown can abort a finished rank (SIGABRT, "terminate
    called without an active exception"); run_cli must tear it down on every way out."""
    def main(argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdzv", rank=0, world_size=1)
        if fails:
            raise KDError("bad flag")

    try:
        if fails:
            with pytest.raises(SystemExit) as e:
                run_cli(main, [])
            assert e.value.code == 2
        else:
            run_cli(main, [])
        assert not dist.is_initialized()
    finally:  # never leave a group behind for the tests that follow
        if dist.is_initialized():
            dist.destroy_process_group()
