"""Issue 25, "trust what users bring", the scripts' side: a script writes nothing where it was not
asked to (precompute_logits.py --out alone makes no ./runs/<dataset>/); a folder run prints one
CPU-threads line, the true one; bench/gpu.sh takes a folder or a file; make_folder.py limits
either split."""
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_main, write_image_folder
from kd_accel import cli, training
from kd_accel.cache import read_metadata
from kd_accel.config import from_flags
from kd_accel.data import load_folder
from kd_accel.errors import KDError, run_cli
from kd_accel.models import build_model, save_model
from kd_accel.roles import build
from kd_accel.threads import choose_threads


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@pytest.fixture
def tiny_folder(tmp_path):
    """40 training and 20 validation grey 28x28 PNGs in 4 classes (DIR/train, DIR/val)."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for split, n in (("train", 40), ("val", 20)):
        write_image_folder(root / split, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                           torch.arange(n) % 4)
    return root


# -- precompute_logits.py --out: nothing but the cache -----------------------------------------------

@pytest.mark.parametrize("data", ["mnist", "imagefolder"])
def test_precompute_with_out_alone_writes_nothing_else(data, tmp_path, mnist_dir, monkeypatch, request):
    """precompute_logits.py --teacher T --out C, run from an empty current folder: C is written and
    nothing else anywhere, neither ./runs/<dataset>/ (its lock, config.precompute_logits.json, an
    image folder's listings) nor anything beside C or in the data. With --output-dir, the run
    folder gets its config, as before."""
    cwd, outdir = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    outdir.mkdir()
    monkeypatch.chdir(cwd)
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    if data == "mnist":
        save_model(build_model("teacher"), teacher, "teacher", 10)
        args = ["--data-dir", mnist_dir, "--limit-train", "50"]
        data_root = None
    else:
        data_root = request.getfixturevalue("tiny_folder")
        train = load_folder(data_root, "train", channels=1)
        model, record = build(from_flags(teacher_image_size=28).teacher, train, "teacher", log=lambda line: None)
        save_model(model, teacher, "teacher", train.num_classes, record=record)
        args = ["--dataset", "imagefolder", "--data-dir", data_root, "--channels", "1", "--num-workers", "0"]
    data_before = data_root and files_under(data_root)
    run_main(cli.precompute_main, [*args, "--teacher", teacher, "--out", outdir / "c.safetensors"])
    assert files_under(cwd) == []  # before the fix: runs/<dataset>/{.kd_accel.lock, config..., .folders/...}
    assert files_under(outdir) == ["c.safetensors"]
    assert read_metadata(outdir / "c.safetensors")["teacher_fingerprint"]
    assert data_root is None or files_under(data_root) == data_before
    if data == "mnist":  # a run folder asked for gets the config, as before
        run_main(cli.precompute_main, [*args, "--teacher", teacher, "--out", outdir / "c.safetensors",
                                       "--output-dir", tmp_path / "run"])
        assert (tmp_path / "run" / "config.precompute_logits.json").exists() and files_under(cwd) == []


# -- a folder run's CPU threads: one line, the true one ----------------------------------------------

def test_a_folder_run_prints_one_threads_line_the_true_one(tiny_folder, tmp_path, monkeypatch, capsys):
    """train_teacher.py on an image folder on the CPU with 1 decoding worker printed 'cpu threads:
    2 per process (...)' and then 'cpu threads: 1 per process beside 1 DataLoader workers': now the
    second alone, and the training runs on the threads it says (the count is unchanged); nothing is
    written in the current folder."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    want = max(1, choose_threads({})[0] - 1)
    seen = []
    monkeypatch.setattr(training.HOOKS, "batch", [lambda label, batch: seen.append(torch.get_num_threads())])
    before = torch.get_num_threads()
    try:
        run_main(cli.train_teacher_main, ["--dataset", "imagefolder", "--data-dir", tiny_folder, "--channels", "1",
                                          "--image-size", "28", "--num-workers", "1", "--epochs", "1",
                                          "--batch-size", "20", "--augment", "none", "--output-dir", tmp_path / "run"])
    finally:
        torch.set_num_threads(before)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cpu threads")]
    assert lines == [f"cpu threads: {want} per process beside 1 DataLoader workers decoding images "
                     "(set OMP_NUM_THREADS or --num-workers to choose)"], lines
    assert seen and set(seen) == {want}
    assert files_under(cwd) == []


# -- bench/gpu.sh OUT: a folder or a file -----------------------------------------------------------

FAKE_PYTHON = """#!/bin/sh
# stands in for python3: "no CUDA" to gpu.sh's probe; otherwise says how it was called
case "$1" in -c) exit 1;; esac
echo "argv: $*"
echo "a line on stderr" >&2
"""


def gpu_sh(tmp_path, *args):
    """bash bench/gpu.sh ARGS from tmp_path/cwd, with a python3 that only prints its arguments."""
    bin_dir, cwd = tmp_path / "bin", tmp_path / "cwd"
    bin_dir.mkdir(exist_ok=True)
    cwd.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


def json_flag(proc):
    argv = next(line for line in proc.stdout.splitlines() if line.startswith("argv: ")).split()
    return argv[argv.index("--json") + 1]


def test_gpu_sh_takes_a_folder_or_a_file(tmp_path):
    """OUT a folder (existing, or ending in /): OUT/gpu.json and OUT/gpu.log (all it printed); any
    other path: that JSON file, no log, from the current folder; a flag first: the default JSON.
    A folder that cannot be made: one line. (bench/gpu.py stubbed: its argument handling below.)"""
    cwd = tmp_path / "cwd"
    folder = tmp_path / "out"
    folder.mkdir()
    proc = gpu_sh(tmp_path, folder, "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert json_flag(proc) == f"{folder}/gpu.json" and proc.stdout.rstrip().endswith("--steps 3")
    log = (folder / "gpu.log").read_text()  # before the fix: --json OUT, IsADirectoryError after the first case
    assert "no CUDA device: a CPU dry run" in log and "argv: " in log and "a line on stderr" in log
    assert "no CUDA device" in proc.stderr and "a line on stderr" in proc.stderr
    proc = gpu_sh(tmp_path, "new/")  # relative, from the current folder (not the tree's root)
    assert proc.returncode == 0 and json_flag(proc) == "new/gpu.json" and (cwd / "new" / "gpu.log").exists()
    proc = gpu_sh(tmp_path, "r.json")
    assert proc.returncode == 0 and json_flag(proc) == "r.json"
    assert files_under(cwd) == ["new", "new/gpu.log"]  # the file case writes no log (and the stub no JSON)
    for first in (["--steps", "3"], ["", "--steps", "3"]):  # no OUT, or an empty one: the default
        proc = gpu_sh(tmp_path, *first)
        assert proc.returncode == 0 and json_flag(proc) == str(ROOT / "bench" / "results" / "gpu.json")
    (tmp_path / "a_file").write_text("x")
    proc = gpu_sh(tmp_path, f"{tmp_path}/a_file/sub/")
    assert proc.returncode == 2 and "argv" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [f"bench/gpu.sh: cannot make the folder {tmp_path}/a_file/sub/ for "
                                                "gpu.json and gpu.log"]


def test_gpu_py_json_takes_a_folder_and_refuses_an_unwritable_path_before_any_case(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu

    (tmp_path / "d").mkdir()
    assert gpu.json_path(str(tmp_path / "d")) == str(tmp_path / "d" / "gpu.json")
    assert gpu.json_path(str(tmp_path / "new") + "/") == str(tmp_path / "new" / "gpu.json")
    assert (tmp_path / "new").is_dir() and gpu.json_path(str(tmp_path / "r.json")) == str(tmp_path / "r.json")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match=r"--json .*a_file/r.json: .*a_file is a file, not a folder$"):
        gpu.main(["--device", "cpu", "--synthetic", "--json", str(tmp_path / "a_file" / "r.json")])
    with pytest.raises(SystemExit, match=r"--json .*a_file/sub/r.json: cannot make the folder .*sub: Not a directory$"):
        gpu.main(["--device", "cpu", "--synthetic", "--json", str(tmp_path / "a_file" / "sub" / "r.json")])
    with pytest.raises(SystemExit, match="--json '': give a file or a folder"):
        gpu.main(["--device", "cpu", "--synthetic", "--json", ""])
    assert "warm-up" not in capsys.readouterr().out  # refused before any case ran


# -- docs/examples/make_folder.py --limit-val --------------------------------------------------------

def make_folder():
    spec = importlib.util.spec_from_file_location("make_folder", ROOT / "docs" / "examples" / "make_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_folder_limits_the_validation_split(tmp_path, mnist_dir, capsys):
    """--limit-val N writes the first N test images into val/ as --limit-train N does into train/;
    without it, the whole split; N < 1 or --out a file: one line, exit 2, nothing written."""
    mf = make_folder()
    out = tmp_path / "fm"
    mf.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(out), "--limit-train", "7",
             "--limit-val", "3"])
    assert len(list((out / "train").rglob("*.png"))) == 7
    assert sorted(p.name for p in (out / "val").rglob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert capsys.readouterr().out.splitlines() == [f"train: 7 images in {out / 'train'}", f"val: 3 images in {out / 'val'}"]
    for bad in (["--limit-val", "0"], ["--limit-train", "-1"]):
        with pytest.raises(KDError, match=f"{bad[0]} must be >= 1, got {bad[1]}"):
            mf.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "none"), *bad])
    (tmp_path / "f").write_text("x")
    with pytest.raises(KDError, match="is a file, not a folder"):
        mf.main(["--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "f")])
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as e:  # as the script runs it: kd_accel's one line
        run_cli(mf.main, ["--out", str(tmp_path / "none"), "--limit-val", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == \
        "kd_accel: error: --limit-val must be >= 1, got 0 (leave it out for the whole split)"
