"""Issue 19, items 3 and 4: an image folder's misuse stops with one line naming the cause.

Bad files (also when a DataLoader worker meets them), empty or missing folders, flags that do
not apply to the data source, and a folder changed since its cache, checkpoints or models were
made: refused naming how many files differ and the first differing path."""
import shutil

import pytest
import torch

from conftest import run_main, run_script, write_image_folder
from kd_accel import cli
from kd_accel.data import load_folder
from kd_accel.data.streamed import DrawnCrops, folder_loader
from kd_accel.errors import KDError, worker_message

# a student read from a folder at 28 px; TEACHING adds a teacher trained here (a --teacher file says its own size)
FOLDER = ["--dataset", "imagefolder", "--channels", "1", "--image-size", "28", "--batch-size", "20", "--epochs", "1",
          "--no-baseline"]
TEACHING = [*FOLDER, "--teacher-image-size", "28", "--teacher-epochs", "1"]


def images(n, seed=0, c=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


@pytest.fixture
def folder(tmp_path):
    """DIR/train (60 images, 3 classes) and DIR/val (30), grey PNG."""
    root = tmp_path / "data"
    write_image_folder(root / "train", images(60), torch.arange(60) % 3)
    write_image_folder(root / "val", images(30, seed=1), torch.arange(30) % 3)
    return root


# --- bad files ----------------------------------------------------------------------------------------

def _spoil(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "not an image":
        path.write_text("this is not an image\n")
    elif how == "empty":
        path.write_bytes(b"")


def _first_error(tmp_path, how, fmt, workers):
    paths = write_image_folder(tmp_path / "train", images(24, c=3, size=32), torch.arange(24) % 2, fmt=fmt)
    bad = paths[7]
    _spoil(bad, how)
    split = load_folder(tmp_path, "train")
    loader = folder_loader(split.dataset_for(DrawnCrops(0)), batch_size=8, workers=workers, device="cpu", shuffle=True)
    with pytest.raises(KDError) as e:
        for _ in loader:
            pass
    return bad, e.value


@pytest.mark.parametrize("how", ["truncated", "not an image", "empty"])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_bad_file_is_one_line_naming_it(tmp_path, how, fmt):
    bad, error = _first_error(tmp_path, how, fmt, workers=0)
    assert "\n" not in str(error) and str(bad) in str(error) and str(error).startswith("cannot read image"), error


@pytest.mark.slow  # torch then takes ~5 s per worker to stop them
def test_a_bad_file_met_by_a_worker_is_one_line_naming_it(tmp_path):
    """torch re-raises a worker's KDError with the worker's traceback in its message; the line
    the user sees is the worker's own. (torch then takes ~5 s per worker to shut them down after
    a worker error, in any DataLoader: one case here, not every kind of bad file.)"""
    bad, error = _first_error(tmp_path, "truncated", "jpg", workers=2)
    assert "DataLoader worker" in str(error)  # it did come from a worker
    line = worker_message(error)
    assert "\n" not in line and str(bad) in line and line.startswith("cannot read image"), line


@pytest.mark.slow
def test_a_bad_file_stops_the_command_line_with_one_line(folder):
    """Through distill.py as a user runs it: exit 2, one line on stderr, nothing trained."""
    bad = sorted((folder / "train" / "c1").iterdir())[3]
    _spoil(bad, "truncated")
    proc = run_script("distill.py", *TEACHING, "--data-dir", folder, "--output-dir", folder.parent / "run",
                      "--num-workers", "2", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kd_accel: error")]
    assert proc.returncode == 2 and len(errors) == 1 and str(bad) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (folder.parent / "run" / "teacher.safetensors").exists()


def test_worker_message_leaves_other_messages_alone():
    assert worker_message(KDError("plain line")) == "plain line"
    wrapped = KDError("Caught KDError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                      '  File "x.py", line 1\nkd_accel.errors.KDError: cannot read image a/b.jpg: broken')
    assert worker_message(wrapped) == "cannot read image a/b.jpg: broken"


@pytest.mark.parametrize("case", ["empty class", "no val", "empty val", "file not folder", "no class folders"])
def test_empty_or_missing_folders_are_one_line(tmp_path, folder, case):
    if case == "empty class":
        (folder / "train" / "c9").mkdir()
        where, split = "c9", "train"
    elif case == "no val":
        shutil.rmtree(folder / "val")
        where, split = "val", "test"
    elif case == "empty val":
        shutil.rmtree(folder / "val")
        (folder / "val").mkdir()
        where, split = "no class folders", "test"
    elif case == "file not folder":
        shutil.rmtree(folder / "val")
        (folder / "val").write_text("x")
        where, split = "is not a folder", "test"
    else:
        shutil.rmtree(folder / "train")
        (folder / "train").mkdir()
        (folder / "train" / "loose.png").write_bytes(b"")
        where, split = "no class folders", "train"
    with pytest.raises(KDError) as e:
        load_folder(folder, split)
    assert where in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_no_data_dir_is_one_line():
    with pytest.raises(KDError, match="needs --data-dir"):
        load_folder(None, "train")


# --- flags that do not apply -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--augment", "shift"], "--augment shift is for the in-memory"),
    (["--train-subset", "10"], "--train-subset is for the in-memory"),
])
def test_folder_refuses_in_memory_only_settings(folder, tmp_path, args, words):
    with pytest.raises(KDError, match=words):
        run_main(cli.distill_main, [*TEACHING, "--data-dir", folder, "--output-dir", tmp_path / "run", *args])
    assert not (tmp_path / "run" / "teacher.safetensors").exists()


@pytest.mark.parametrize("args, words", [
    (["--channels", "3"], "--channels is for image folders"),
    (["--num-workers", "2"], "--num-workers is for image folders"),
    (["--augment", "rrc"], "--augment rrc"),
])
def test_in_memory_data_refuse_folder_settings(mnist_dir, tmp_path, args, words):
    with pytest.raises(KDError, match=words):
        run_main(cli.distill_main, ["--data-dir", mnist_dir, "--limit-train", "50", "--limit-test", "20",
                                    "--output-dir", tmp_path / "run", *args])


def test_an_output_inside_the_image_folder_is_refused(folder):
    with pytest.raises(KDError, match="lies inside --data-dir"):
        run_main(cli.distill_main, [*TEACHING, "--data-dir", folder, "--output-dir", folder / "train" / "run"])
    assert not (folder / "train" / "run").exists()


# --- a folder changed since its cache, checkpoints and models ------------------------------------------

# (the kinds of change to a folder, each refused by name: tests/test_folder_changes.py)


def test_a_changed_folder_refuses_resume_and_reuse_naming_the_file(folder, tmp_path):
    run = tmp_path / "run"
    args = [*TEACHING, "--data-dir", folder, "--output-dir", run, "--augment", "none"]
    run_main(cli.distill_main, [*args, "--checkpoint-every", "1"])
    from test_folder_changes import change

    change(folder, "added")
    with pytest.raises(KDError) as e:  # the run's own teacher, made from the folder as it was
        run_main(cli.distill_main, [*args, "--resume", "latest"])
    assert "teacher" in str(e.value) and "first: c1/00000extra.png (added)" in str(e.value), str(e.value)


def test_a_teacher_with_non_finite_logits_writes_no_folder_cache(folder, tmp_path, accelerator):
    """The streamed precompute refuses a teacher whose logits are NaN, in one line, and writes no
    cache (its partial file, with no view recorded done, is started afresh by the next run)."""
    from kd_accel import teaching
    from kd_accel.config import from_flags
    from kd_accel.models import build_model, save_model

    teacher = build_model("teacher", 3, (1, 224, 224))  # a file without a record: the data's default size
    with torch.no_grad():
        next(teacher.parameters()).fill_(3e38)  # finite weights, logits not (NaN weights are refused on reading)
    path = tmp_path / "teacher.safetensors"
    save_model(teacher, path, "teacher", 3)
    cfg = from_flags(dataset="imagefolder", channels=1, augment="none", teacher=str(path))
    out = tmp_path / "cache.safetensors"
    with pytest.raises(KDError, match="non-finite logits for 60 of 60 training samples"):
        teaching.precompute(accelerator, cfg, path, load_folder(folder, "train", channels=1, workers=0), out)
    assert not out.exists()
