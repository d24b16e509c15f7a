"""Issue 9, part 5: each of these is one `kd_accel: error: ...` line naming what is wrong, never a
traceback. IDX files here are written in the real on-disk format (big-endian header + bytes)."""
import errno
import gzip
import json
import os
import struct
import subprocess
import textwrap

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from conftest import launch_cmd, run_script, reset_accelerate_state
from kd_accel.models import files as models  # save_model looks save_file up there
from kd_accel.config import from_flags
from kd_accel.data import load_split
from kd_accel.errors import KDError, run_cli
from kd_accel.io import atomic_path, write_json
from kd_accel.models import Student, Teacher, load_model, read_checkpoint, save_model
from kd_accel.pipeline import teacher_info_from_checkpoint
from kd_accel.teaching import resolve_cache


def write_idx(path, t, gz=False):
    """uint8 tensor -> IDX file: 0x0000, type 0x08, ndim, ndim big-endian u32 sizes, the bytes."""
    t = torch.as_tensor(t, dtype=torch.uint8)
    data = struct.pack(">HBB", 0, 0x08, t.ndim) + struct.pack(f">{t.ndim}I", *t.shape) + t.numpy().tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_mnist(root, n=20, **override):
    """A flat MNIST folder of n train and n test samples; override={file stem: tensor}."""
    g = torch.Generator().manual_seed(0)
    files = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.arange(n) % 10,
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.arange(n) % 10,
    }
    for name, t in override.items():  # "<stem>.gz": that file gzipped instead
        files.pop(name.removesuffix(".gz"))
        files[name] = t
    return {name: write_idx(root / name.removesuffix(".gz"), t, gz=name.endswith(".gz")) for name, t in files.items()}


def one_line(msg):
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ---- labels and IDX shapes ---------------------------------------------------------------------

@pytest.mark.parametrize("split,stem", [("train", "train-labels-idx1-ubyte"), ("test", "t10k-labels-idx1-ubyte")])
def test_label_outside_the_classes_is_named(tmp_path, split, stem):
    labels = torch.arange(20) % 10
    labels[7] = labels[12] = 255
    files = fake_mnist(tmp_path, **{stem: labels})
    with pytest.raises(KDError) as e:
        load_split("mnist", split, tmp_path)
    msg = one_line(str(e.value))
    assert str(files[stem]) in msg and "label 255 at index 7" in msg and "[0, 10)" in msg and "2 such" in msg, msg


def test_bad_training_label_from_the_cli_is_one_line(tmp_path, capsys):
    """Today's symptom was an IndexError from inside the loss; now the script stops at load time."""
    from kd_accel.cli import train_teacher_main

    labels = torch.arange(20) % 10
    labels[3] = 255
    fake_mnist(tmp_path, **{"train-labels-idx1-ubyte": labels})
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(train_teacher_main, ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                                         "--epochs", "1", "--batch-size", "8"])
    finally:
        reset_accelerate_state()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "label 255 at index 3" in err and "train-labels-idx1-ubyte" in err, err


@pytest.mark.parametrize(
    "stem,tensor,words",
    [
        ("train-images-idx3-ubyte", torch.zeros(20, 784), "images of shape [20, 784], expected [N, 28, 28]"),
        ("train-images-idx3-ubyte", torch.zeros(20, 27, 28), "images of shape [20, 27, 28], expected [N, 28, 28]"),
        ("train-images-idx3-ubyte", torch.zeros(20, 1, 28, 28), "images of shape [20, 1, 28, 28]"),
        ("train-images-idx3-ubyte", torch.zeros(0, 28, 28), "images of shape [0, 28, 28], expected [N, 28, 28] with N >= 1"),
        ("t10k-images-idx3-ubyte.gz", torch.zeros(0, 28, 28), "images of shape [0, 28, 28]"),
        ("train-labels-idx1-ubyte", torch.zeros(20, 1), "labels of shape [20, 1], expected [20]"),
        ("train-labels-idx1-ubyte", torch.zeros(19), "labels of shape [19], expected [20]"),
        ("train-labels-idx1-ubyte", torch.zeros(0), "labels of shape [0], expected [20]"),
    ],
)
def test_idx_files_with_odd_shapes_are_named(tmp_path, stem, tensor, words):
    files = fake_mnist(tmp_path, **{stem: tensor})
    with pytest.raises(KDError) as e:
        load_split("mnist", "test" if stem.startswith("t10k") else "train", tmp_path)
    msg = one_line(str(e.value))
    assert str(files[stem]) in msg and words in msg, msg


# ---- output folder and writes ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_output_folder_that_cannot_be_created(tmp_path, mnist_dir, where, capsys, reset_accelerate):
    from kd_accel.cli import distill_main

    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run" if where == "under a file" else "/proc/kd_accel_test/run"
    with pytest.raises(SystemExit) as e:
        run_cli(distill_main, ["--data-dir", str(mnist_dir), "--output-dir", str(out), "--limit-train", "200",
                               "--limit-test", "100", "--epochs", "1", "--teacher-epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"kd_accel: error: cannot create folder {out}: "), err
    assert ("afile is a file" if where == "under a file" else "No such file or directory") in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "x"


def _no_temporaries(folder, name):
    return [p.name for p in folder.iterdir() if p.name != name] == []


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
])
def test_disk_full_keeps_the_old_checkpoint_and_says_so(tmp_path, monkeypatch, failure):
    path = tmp_path / "teacher.safetensors"
    save_model(Teacher(), path, "teacher", 10)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise failure

    monkeypatch.setattr(models, "save_file", full_disk)
    with pytest.raises(KDError) as e:
        save_model(Teacher(), path, "teacher", 10)
    msg = one_line(str(e.value))
    assert msg.startswith(f"cannot write {path}: ") and "No space left on device" in msg, msg
    assert msg.endswith("the previous teacher.safetensors is untouched"), msg
    assert path.read_bytes() == before and _no_temporaries(tmp_path, path.name)

    # no previous file: said so, and nothing is left behind
    with pytest.raises(KDError, match="nothing was written"):
        save_model(Teacher(), tmp_path / "new.safetensors", "teacher", 10)
    assert _no_temporaries(tmp_path, path.name)


def test_disk_full_writing_json_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})
    before = path.read_bytes()

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", full_disk)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda argv: write_json(path, {"new": 2}))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"kd_accel: error: cannot write {path}: No space left on device; the previous metrics.json is untouched\n"
    assert path.read_bytes() == before and _no_temporaries(tmp_path, path.name)


# ---- directories where files belong ----------------------------------------------------------------

def test_cache_path_that_is_a_directory(tmp_path, accelerator):
    from conftest import tiny_split

    run = tmp_path / "run"
    (run / "teacher_logits.safetensors").mkdir(parents=True)
    for cfg, path in [(from_flags(output_dir=str(run)), run / "teacher_logits.safetensors"),
                      (from_flags(output_dir=str(tmp_path / "o"), logits=str(tmp_path)), tmp_path)]:
        with pytest.raises(KDError) as e:
            resolve_cache(accelerator, cfg, tmp_path / "no-teacher.safetensors", "fp", tiny_split())
        assert one_line(str(e.value)) == f"logits cache {path} is a directory, not a file: remove or rename it"
    with pytest.raises(KDError, match=f"cannot write {run / 'teacher_logits.safetensors'}: it is a directory"):
        with atomic_path(run / "teacher_logits.safetensors") as tmp:  # precompute --out DIR
            tmp.write_text("x")


def test_checkpoint_path_that_is_a_directory(tmp_path):
    for f in (read_checkpoint, load_model):
        with pytest.raises(KDError) as e:
            f(tmp_path)
        assert one_line(str(e.value)) == f"checkpoint {tmp_path} is a directory, not a safetensors file"


# ---- checkpoint metadata and shapes -------------------------------------------------------------

@pytest.mark.parametrize("key", ["test_accuracy", "train_time_s"])  # params: counted from the weights
def test_non_numeric_teacher_metadata_named(tmp_path, accelerator, key):
    from conftest import tiny_split

    test = tiny_split(10)
    meta = {"test_accuracy": 99.0, "params": 481214, "train_time_s": 1.5, key: "n/a"}
    path = tmp_path / "teacher.safetensors"
    save_model(Teacher(), path, "teacher", 10, test_fingerprint=test.fingerprint(), **meta)
    with pytest.raises(KDError) as e:
        teacher_info_from_checkpoint(accelerator, path, test)
    assert one_line(str(e.value)) == (f"{path}: metadata {key}='n/a' is not "
                                      f"{'an integer' if key == 'params' else 'a number'}")


def test_non_numeric_num_classes_named(tmp_path):
    path = tmp_path / "t.safetensors"  # a file written before architecture records
    save_file({k: v.contiguous() for k, v in Teacher().state_dict().items()}, str(path),
              metadata={"arch": "teacher", "num_classes": "ten"})
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    assert one_line(str(e.value)) == f"{path}: metadata num_classes='ten' is not an integer"
    record = json.dumps({"spec": "notebook:teacher", "num_classes": "ten", "in_chans": 1, "input_shape": [1, 28, 28],
                         "preprocessing": None})
    save_file({k: v.contiguous() for k, v in Teacher().state_dict().items()}, str(path),
              metadata={"role": "teacher", "arch_spec": record})
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    assert one_line(str(e.value)) == f"{path}: metadata arch_spec: num_classes must be a positive integer, not 'ten'"


def test_wrong_shapes_name_the_tensor_and_both_shapes(tmp_path):
    path = tmp_path / "t.safetensors"
    save_model(Teacher(num_classes=7), path, "teacher", 10)  # metadata says 10 classes, weights have 7
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    assert one_line(str(e.value)) == (f"{path}: weights do not fit 'notebook:teacher' with 10 classes: tensor head.2.weight "
                                      "is [7, 300] in the checkpoint, [10, 300] in the model")


def test_missing_and_unexpected_tensors_named(tmp_path):
    path = tmp_path / "t.safetensors"
    state = {k: v.contiguous() for k, v in Teacher().state_dict().items()}
    state["extra.weight"] = state.pop("block1.0.weight")
    save_file(state, str(path), metadata={"arch": "teacher", "num_classes": "10"})
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    assert one_line(str(e.value)).endswith("missing block1.0.weight; unexpected extra.weight"), e.value
    save_model(Student(), path, "teacher", 10)  # a student's weights labelled as a teacher
    with pytest.raises(KDError) as e:
        load_model(path, "teacher")
    msg = one_line(str(e.value))
    assert "missing block1.0.bias, block1.0.weight, block1.1.bias (+" in msg and "unexpected features" in msg, msg


# ---- several processes ------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_print_the_error_once(tmp_path, mnist_dir):
    """Both ranks refuse the teacher (after the process group is up): one error line, then
    Accelerate's launcher reports the failed child (its traceback, exit 1), as docs/usage.md says."""
    bad = tmp_path / "teacher.safetensors"
    save_model(Teacher(num_classes=7), bad, "teacher", 10)
    proc = run_script("distill.py", "--data-dir", mnist_dir, "--output-dir", tmp_path / "run", "--teacher", bad,
                      "--limit-train", "200", "--limit-test", "100", nproc=2, check=False)
    lines = [l for l in proc.stderr.splitlines() if "kd_accel: error:" in l]
    assert lines == [f"kd_accel: error: {bad}: weights do not fit 'notebook:teacher' with 10 classes: tensor head.2.weight "
                     "is [7, 300] in the checkpoint, [10, 300] in the model"], proc.stderr
    assert proc.returncode == 1 and "ChildFailedError" in proc.stderr and "exitcode  : 2" in proc.stderr


@pytest.mark.slow
def test_an_error_on_another_rank_only_is_shown_with_its_rank(tmp_path):
    script = tmp_path / "rank1_fails.py"
    script.write_text(textwrap.dedent("""
        from accelerate import Accelerator
        from kd_accel.errors import KDError, run_cli

        def main(argv):
            state = Accelerator()  # as the scripts do (a bare PartialState ignores ACCELERATE_USE_CPU)
            if state.process_index == 1:
                raise KDError("only rank 1 sees this")
            state.wait_for_everyone()  # rank 0 waits here until the launcher stops it

        run_cli(main)
    """))
    cmd, env = launch_cmd(script, [], 2)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if "kd_accel: error:" in l]
    # rank 0, stuck in the barrier, either is stopped by the launcher or notices first and says so
    lost = "kd_accel: error: lost contact with another process, which stopped first (see its error above)"
    assert lines in (["kd_accel: error: [rank 1] only rank 1 sees this"],
                     ["kd_accel: error: [rank 1] only rank 1 sees this", lost]), proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr


def test_teacher_given_as_a_folder_is_named(tmp_path, mnist_dir, capsys):
    from kd_accel.cli import distill_main
    from kd_accel.errors import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(distill_main, ["--data-dir", str(mnist_dir), "--teacher", str(tmp_path), "--output-dir",
                               str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kd_accel: error: --teacher {tmp_path} is a folder; give the teacher checkpoint file (teacher.safetensors)"
