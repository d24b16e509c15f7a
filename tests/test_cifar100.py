"""CIFAR-100 read from torchvision's on-disk format (cifar-100-python/{train,test,meta}): the 100
fine labels, the pixels by index arithmetic, the class names from meta, torchvision's own reader
agreeing on the same synthetic files, and the same safe unpickling as CIFAR-10."""
import os

import numpy as np
import pytest
import torch

from kd_accel import cli
from kd_accel.data import data_files, ensure_downloaded, load_split
from kd_accel.errors import KDError
from test_cifar import RunsCode, expected_images, one_line, write_pickle

FINE = [f"fine_{i:02d}" for i in range(100)]
COARSE = [f"coarse_{i:02d}" for i in range(20)]
TRAIN_N, TEST_N = 40, 25


def make_split(n, seed, name):
    """A split's dict as the real files hold it: 'data' uint8 [n, 3072] (the red, green and blue
    planes of 32x32 in turn), 'fine_labels' in [0, 100), 'coarse_labels' in [0, 20)."""
    rng = np.random.default_rng(seed)
    fine = [int(v) for v in rng.integers(0, 100, n)]
    return {"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch 1 of 1",
            "fine_labels": fine, "coarse_labels": [v // 5 for v in fine],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}


@pytest.fixture
def cifar100(tmp_path):
    """(data dir, {file: dict}) in torchvision's layout: <data dir>/cifar-100-python/{train,test,meta}."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    files = {"train": make_split(TRAIN_N, 1, "training"), "test": make_split(TEST_N, 2, "testing"),
             "meta": {"fine_label_names": FINE, "coarse_label_names": COARSE}}
    for name, obj in files.items():
        write_pickle(folder / name, obj)
    return tmp_path, files


def test_splits_hold_the_fine_labels_pixels_and_class_names(cifar100, monkeypatch):
    root, files = cifar100
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # its md5s are the real files'
    for split, n in (("train", TRAIN_N), ("test", TEST_N)):
        ours = load_split("cifar100", split, root)
        assert ours.images.shape == (n, 3, 32, 32) and ours.images.dtype == torch.uint8 and ours.num_classes == 100
        assert torch.equal(ours.images, expected_images(files[split]["data"]))
        assert ours.labels.dtype == torch.int64 and ours.labels.tolist() == files[split]["fine_labels"]
        assert ours.classes == tuple(FINE) and ours.subset(5).classes == tuple(FINE)
        ref = tv_cifar.CIFAR100(str(root), train=split == "train", download=False)
        assert ref.classes == FINE and ours.labels.tolist() == ref.targets
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(ref.data))  # torchvision keeps HWC
    assert ours.norm == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert sorted(p.name for p in data_files("cifar100", root)) == ["meta", "test", "train"]
    assert cli.distill_parser().parse_args(["--dataset", "cifar100"]).dataset == "cifar100"


@pytest.mark.parametrize("name, change, words", [
    ("meta", None, "(missing: meta)"),
    ("test", lambda d: {k: v for k, v in d.items() if k != "fine_labels"}, "no 'fine_labels'"),
    ("test", lambda d: {**d, "fine_labels": [100] + d["fine_labels"][1:]}, "label 100 at index 0 is outside [0, 100)"),
    ("meta", lambda d: {**d, "fine_label_names": FINE[:20]}, "'fine_label_names' holds 20 items, expected the 100"),
    ("train", lambda d: {**d, "data": RunsCode(os.system, "true")}, "refused to unpickle posix.system"),
])
def test_bad_files_are_one_line_naming_them(cifar100, name, change, words):
    root, files = cifar100
    path = root / "cifar-100-python" / name
    if change is None:
        path.unlink()
    else:
        write_pickle(path, change(files[name]))
    with pytest.raises(KDError) as e:
        ensure_downloaded("cifar100", root)
        load_split("cifar100", "train" if name == "train" else "test", root)
    msg = one_line(str(e.value))
    assert words in msg and name in msg, msg
