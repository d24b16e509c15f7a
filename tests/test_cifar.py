"""CIFAR-10 read from its on-disk format (torchvision's cifar-10-batches-py), checked against
index arithmetic on the pickled rows and against torchvision's own reader."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from kd_accel.data import Split, ensure_downloaded, load_split, to_float
from kd_accel.errors import KDError

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
PER_TRAIN_BATCH, TEST_N = 20, 30
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def one_line(msg):
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def make_batch(n, seed, name):
    """A batch dict as the real files hold it: 'data' uint8 [n, 3072] (1024 red, 1024 green,
    1024 blue values per row, each 32x32 row-major), 'labels' a list of ints."""
    rng = np.random.default_rng(seed)
    return {"batch_label": f"{name} of 5", "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(folder, test_n=TEST_N, per_batch=PER_TRAIN_BATCH):
    """The five training batches, the test batch and batches.meta in `folder`; returns
    {file name: batch dict}."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {name: make_batch(per_batch, i, name) for i, name in enumerate(TRAIN_FILES, 1)}
    batches["test_batch"] = make_batch(test_n, 99, "testing batch 1")
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    meta = {"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}
    write_pickle(folder / "batches.meta", meta)
    return batches


@pytest.fixture
def cifar(tmp_path):
    """(data dir, batches) in torchvision's layout: <data dir>/cifar-10-batches-py/<batch files>."""
    return tmp_path, write_cifar(tmp_path / "cifar-10-batches-py")


def expected_images(data):
    """[n, 3, 32, 32] with [i, c, y, x] = data[i, c*1024 + y*32 + x], by index arithmetic."""
    c, y, x = np.arange(3)[:, None, None], np.arange(32)[None, :, None], np.arange(32)[None, None, :]
    return torch.from_numpy(data[:, c * 1024 + y * 32 + x])


# ---- layout ---------------------------------------------------------------------------------------

def test_test_split_pixels_follow_the_colour_planes(cifar):
    root, batches = cifar
    test = load_split("cifar10", "test", root)
    data = batches["test_batch"]["data"]
    assert test.images.shape == (TEST_N, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == batches["test_batch"]["labels"]
    assert torch.equal(test.images, expected_images(data))
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 7), (29, 2, 31, 31), (11, 2, 0, 31), (7, 0, 31, 0)]:
        assert int(test.images[i, c, y, x]) == int(data[i, c * 1024 + y * 32 + x])
    assert test.input_shape == (3, 32, 32) and test.num_classes == 10 and test.dataset == "cifar10"


def test_train_concatenates_batches_1_to_5_in_order(cifar):
    root, batches = cifar
    train = load_split("cifar10", "train", root)
    assert len(train) == 5 * PER_TRAIN_BATCH
    assert train.labels.tolist() == sum((batches[f]["labels"] for f in TRAIN_FILES), [])
    for k, name in enumerate(TRAIN_FILES):
        rows = slice(k * PER_TRAIN_BATCH, (k + 1) * PER_TRAIN_BATCH)
        assert torch.equal(train.images[rows], expected_images(batches[name]["data"])), name


def test_flat_layout_is_read(tmp_path):
    batches = write_cifar(tmp_path)  # the batch files directly in the data dir
    test = load_split("cifar10", "test", tmp_path)
    assert torch.equal(test.images, expected_images(batches["test_batch"]["data"]))


def test_bytes_keys_are_accepted(cifar):
    root, batches = cifar
    batch = batches["test_batch"]
    write_pickle(root / "cifar-10-batches-py" / "test_batch", {k.encode(): v for k, v in batch.items()})
    test = load_split("cifar10", "test", root)
    assert torch.equal(test.images, expected_images(batch["data"])) and test.labels.tolist() == batch["labels"]


def py2_pickle(batch):
    """`batch` as Python 2's cPickle wrote the real files (protocol 2): the array through
    numpy.core.multiarray._reconstruct, its pixel bytes and every text as a py2 str (BINSTRING)."""
    def s(text):
        raw = text if isinstance(text, bytes) else text.encode("latin1")
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw

    def i(v):
        return b"J" + struct.pack("<i", v)

    data = batch["data"]
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s("b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + s("u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s("|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    labels = b"](" + b"".join(i(v) for v in batch["labels"]) + b"e"
    names = b"](" + b"".join(s(f) for f in batch["filenames"]) + b"e"
    return (b"\x80\x02}(" + s("batch_label") + s(batch["batch_label"]) + s("labels") + labels + s("data") + array
            + s("filenames") + names + b"u.")


def test_python2_pickles_as_the_real_files_are_read(cifar):
    root, batches = cifar
    batch = batches["test_batch"]
    raw = py2_pickle(batch)
    plain = pickle.loads(raw, encoding="latin1")  # the stdlib's reading of the hand-written opcodes
    assert plain["labels"] == batch["labels"] and np.array_equal(plain["data"], batch["data"])
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    test = load_split("cifar10", "test", root)
    assert torch.equal(test.images, expected_images(batch["data"])) and test.labels.tolist() == batch["labels"]


def test_torchvision_reads_the_same_files_the_same(cifar, monkeypatch):
    """torchvision's CIFAR10 on the synthetic files (its md5 checks bypassed): the fixture really
    is the on-disk format, and our reader agrees with torchvision's on it."""
    import torchvision.datasets.cifar as tv_cifar

    root, _ = cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    for train, split in ((True, "train"), (False, "test")):
        ref = tv_cifar.CIFAR10(str(root), train=train, download=False)
        ours = load_split("cifar10", split, root)
        assert ref.classes == LABEL_NAMES
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))  # torchvision keeps HWC
        assert ours.labels.tolist() == ref.targets


# ---- errors ---------------------------------------------------------------------------------------

def test_missing_batch_file_named(cifar):
    root, _ = cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(KDError) as e:
        ensure_downloaded("cifar10", root)
    msg = one_line(str(e.value))
    assert "(missing: data_batch_3);" in msg and "--data-dir" in msg and "cifar-10-batches-py" in msg, msg
    with pytest.raises(KDError, match="data_batch_3"):
        load_split("cifar10", "test", root)


class RunsCode:
    """Unpickling this calls func(arg): what a malicious data file would do."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_pickle_that_calls_something_is_refused_without_running_it(cifar, how):
    root, batches = cifar
    marker = root / "ran"
    if how == "os.system":
        payload = RunsCode(os.system, f"touch {marker}")
    else:
        payload = RunsCode(exec, f"open({str(marker)!r}, 'w')")
    write_pickle(root / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], "data": payload})
    with pytest.raises(KDError) as e:
        load_split("cifar10", "test", root)
    msg = one_line(str(e.value))
    assert "refused" in msg and "test_batch" in msg and ("system" if how == "os.system" else "exec") in msg, msg
    assert not marker.exists()


def test_truncated_batch(cifar):
    root, _ = cifar
    p = root / "cifar-10-batches-py" / "data_batch_2"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(KDError) as e:
        load_split("cifar10", "train", root)
    msg = one_line(str(e.value))
    assert "cannot read CIFAR-10 batch" in msg and str(p) in msg, msg


def test_label_outside_the_classes_named(cifar):
    root, batches = cifar
    batch = batches["data_batch_4"]
    batch["labels"][5] = batch["labels"][9] = 10
    write_pickle(root / "cifar-10-batches-py" / "data_batch_4", batch)
    with pytest.raises(KDError) as e:
        load_split("cifar10", "train", root)
    msg = one_line(str(e.value))
    assert "data_batch_4" in msg and "label 10 at index 5" in msg and "[0, 10)" in msg and "2 such" in msg, msg


@pytest.mark.parametrize("change,words", [
    (lambda b: {**b, "data": b["data"][:, :3071]}, "expected uint8 [N, 3072]"),
    (lambda b: {**b, "data": b["data"].reshape(-1, 3, 32, 32)}, "expected uint8 [N, 3072]"),
    (lambda b: {**b, "data": b["data"].astype(np.int64)}, "int64"),
    (lambda b: {**b, "data": b["data"][:0], "labels": []}, "with N >= 1"),
    (lambda b: {**b, "labels": b["labels"][:-1]}, f"expected {TEST_N} integers"),
    (lambda b: {**b, "labels": [float(v) for v in b["labels"]]}, "float64"),
    (lambda b: {k: v for k, v in b.items() if k != "labels"}, "no 'labels'"),
    (lambda b: [b], "holds a list"),
])
def test_batches_with_odd_contents_are_named(cifar, change, words):
    root, batches = cifar
    write_pickle(root / "cifar-10-batches-py" / "test_batch", change(batches["test_batch"]))
    with pytest.raises(KDError) as e:
        load_split("cifar10", "test", root)
    msg = one_line(str(e.value))
    assert "test_batch" in msg and words in msg, msg


# ---- normalisation and fingerprints ---------------------------------------------------------------

def test_to_float_normalises_each_channel(cifar):
    root, _ = cifar
    test = load_split("cifar10", "test", root)
    assert test.norm == (CIFAR_MEAN, CIFAR_STD)
    x = to_float(test.images, test.norm)
    assert x.dtype == torch.float32 and x.shape == test.images.shape
    for c in range(3):  # channel by channel, in float64, from the plain scaled pixels
        want = (test.images[:, c].double() / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        assert torch.allclose(x[:, c].double(), want, atol=1e-6), c
    assert torch.equal(to_float(test.images), test.images.float() / 255)  # no norm: plain scaling
    with pytest.raises(KDError, match="channels"):
        to_float(test.images[:, :1], test.norm)


def test_subset_keeps_norm_and_fingerprint_follows_the_data(cifar, tmp_path):
    root, batches = cifar
    test = load_split("cifar10", "test", root)
    sub = test.subset(10)
    assert sub.norm == test.norm and len(sub) == 10 and sub.input_shape == (3, 32, 32)
    assert load_split("cifar10", "test", root).fingerprint() == test.fingerprint()
    other = tmp_path / "other" / "cifar-10-batches-py"
    write_cifar(other)
    batch = batches["test_batch"]
    batch["data"][17, 2 * 1024 + 5 * 32 + 9] ^= 1  # one blue pixel of image 17 differs
    write_pickle(other / "test_batch", batch)
    changed = load_split("cifar10", "test", tmp_path / "other")
    assert changed.fingerprint() != test.fingerprint()
    assert int((changed.images != test.images).sum()) == 1 and changed.images[17, 2, 5, 9] != test.images[17, 2, 5, 9]
    plain = Split(test.dataset, test.split, test.images, test.labels, test.num_classes)
    assert plain.fingerprint() != test.fingerprint()  # the norm is part of what the model sees


def test_distill_runs_end_to_end_on_cifar_files(cifar, tmp_path, reset_accelerate, capsys):
    """The whole experiment on the synthetic CIFAR-10 files: crop-flip augmentation by default,
    3-channel teacher and student, a K-view cache of 3x32x32 views."""
    import json

    from safetensors.torch import load_file

    from kd_accel.cli import distill_main
    from kd_accel.models import load_model

    data_dir, _ = cifar
    out = tmp_path / "run"
    distill_main(["--dataset", "cifar10", "--data-dir", str(data_dir), "--output-dir", str(out), "--epochs", "2",
                  "--teacher-epochs", "1", "--batch-size", "25"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_train"] == 5 * PER_TRAIN_BATCH and m["num_test"] == TEST_N
    assert m["cache"]["views"] == 2 and m["cache"]["mode"] == "cache"  # one view per epoch by default
    assert m["student"]["params"] == 41_450 and m["teacher"]["params"] == 626_014
    assert "augment crop-flip" in m["student"]["note"]
    cache = load_file(out / "teacher_logits.crop-flip.2views.safetensors")
    assert cache["logits"].shape == (2, 100, 10) and cache["params"].shape == (2, 100, 5)
    assert set(cache["params"][:, :, 2].unique().tolist()) == {0.0, 1.0}  # flips drawn
    assert cache["params"][:, :, :2].abs().max() <= 4  # pad-4 crops
    teacher, meta = load_model(out / "teacher.safetensors", "teacher")
    assert meta["input_shape"] == "3,32,32"
    assert json.loads((out / "config.json").read_text())["student"]["augment"] == "crop-flip"


def test_an_mnist_teacher_given_for_cifar_is_refused_in_one_line(cifar, tiny_teacher, tmp_path, reset_accelerate):
    from kd_accel.cli import distill_main

    data_dir, _ = cifar
    with pytest.raises(KDError) as e:
        distill_main(["--dataset", "cifar10", "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"),
                      "--teacher", str(tiny_teacher), "--epochs", "1"])
    assert one_line(str(e.value)).endswith("holds a teacher for 1x28x28 inputs, the data are 3x32x32")
