import gzip
import shutil

import pytest
import torch

from kd_accel.data import IndexedTensors, ensure_downloaded, load_split, make_loader, to_float
from kd_accel.errors import KDError


def test_mnist_from_shared_data(mnist_dir):
    train = load_split("mnist", "train", mnist_dir)
    test = load_split("mnist", "test", mnist_dir)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (10000,) and int(test.labels.max()) == 9
    assert torch.bincount(train.labels).min() > 5000
    assert train.fingerprint() != test.fingerprint()
    assert train.subset(100).fingerprint() != train.subset(101).fingerprint()
    assert train.norm is None and train.input_shape == (1, 28, 28)  # MNIST: only the /255


def test_mnist_preprocessing_and_fingerprint_unchanged(mnist_dir):
    """No norm for MNIST: to_float is the plain /255, and the fingerprint is the sha256 of the
    header, pixels and labels it always was (so existing caches and stamps stay valid)."""
    from kd_accel.hashing import tensor_digest

    test = load_split("mnist", "test", mnist_dir).subset(500)
    assert torch.equal(to_float(test.images), test.images.float() / 255)
    assert to_float(test.images).max() == 1.0 and to_float(test.images).min() == 0.0
    assert test.fingerprint() == tensor_digest("mnist/test/(500, 1, 28, 28)", test.images, test.labels)


def test_gzipped_files_read_the_same(mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        if f.name.startswith("t10k") or f.name.startswith("train"):  # level 1: 0.4 s, the default level 9 took 19 s
            with open(f, "rb") as src, gzip.open(raw / (f.name + ".gz"), "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
    a = load_split("mnist", "test", tmp_path)
    b = load_split("mnist", "test", mnist_dir)
    assert a.fingerprint() == b.fingerprint()


def test_missing_files_named(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw)
    with pytest.raises(KDError) as e:
        ensure_downloaded("mnist", tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-images-idx3-ubyte" in msg
    assert "t10k-labels" not in msg and "--data-dir" in msg and "\n" not in msg


def test_truncated_idx_file(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    p = raw / "t10k-images-idx3-ubyte"
    p.chmod(0o644)
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(KDError, match="cannot read IDX"):
        load_split("mnist", "test", tmp_path)


def test_batches_carry_indices_and_aligned_columns():
    n = 37
    cols = {"images": torch.arange(n) * 10, "labels": torch.arange(n) + 1000, "extra": torch.arange(n).float()}
    seen = []
    for batch in make_loader(cols, batch_size=8, shuffle=True, seed=3):
        assert torch.equal(batch["images"], batch["idx"] * 10)
        assert torch.equal(batch["labels"], batch["idx"] + 1000)
        assert torch.equal(batch["extra"], batch["idx"].float())
        seen += batch["idx"].tolist()
    assert sorted(seen) == list(range(n)) and seen != list(range(n))


def test_mismatched_columns_refused():
    with pytest.raises(KDError):
        IndexedTensors(a=torch.zeros(3), b=torch.zeros(4))


def test_flat_layout_is_read(tmp_path, mnist_dir):
    for f in (mnist_dir / "MNIST" / "raw").glob("t10k-*"):
        shutil.copy(f, tmp_path / f.name)
    for f in (mnist_dir / "MNIST" / "raw").glob("train-*"):
        shutil.copy(f, tmp_path / f.name)
    assert load_split("mnist", "test", tmp_path).fingerprint() == load_split("mnist", "test", mnist_dir).fingerprint()


@pytest.mark.slow
def test_fashion_mnist_from_debian_package(tmp_path):
    """.ci/run installs Debian's dataset-fashion-mnist; it is found with no --data-dir files."""
    train = load_split("fashion-mnist", "train", tmp_path)
    test = load_split("fashion-mnist", "test", tmp_path)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.dataset == "fashion-mnist"
