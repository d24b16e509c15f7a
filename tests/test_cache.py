import dataclasses

import pytest
import torch

from kd_accel.cache import CacheKey, load_cache, read_metadata, save_cache
from kd_accel.errors import KDError

KEY = CacheKey("mnist", "train", 50, 10, "teacherfp", "datafp")


def make(tmp_path, dtype="fp32", key=KEY):
    torch.manual_seed(0)
    logits = torch.randn(key.num_samples, key.num_classes) * 5
    labels = torch.randint(0, 10, (key.num_samples,))
    path = tmp_path / "c.safetensors"
    save_cache(path, logits, labels, key, dtype)
    return path, logits, labels


def test_round_trip_fp32(tmp_path):
    path, logits, labels = make(tmp_path)
    got, got_labels = load_cache(path, KEY)
    assert torch.equal(got, logits) and torch.equal(got_labels, labels)
    meta = read_metadata(path)
    assert meta["dtype"] == "fp32" and meta["num_samples"] == "50" and meta["format_version"] == "1"


def test_round_trip_fp16(tmp_path):
    path, logits, _ = make(tmp_path, "fp16")
    got, _ = load_cache(path, KEY)
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), logits, atol=1e-2)


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("teacher_fingerprint", "other", "teacher weights changed"),
        ("data_fingerprint", "other", "training data changed"),
        ("num_classes", 11, "class count differs"),
        ("num_samples", 49, "sample count differs"),
        ("dataset", "fashion-mnist", "data set differs"),
    ],
)
def test_every_mismatch_is_refused_by_name(tmp_path, field, value, words):
    path, _, _ = make(tmp_path)
    with pytest.raises(KDError, match=words):
        load_cache(path, dataclasses.replace(KEY, **{field: value}))


def test_truncated_file_is_refused(tmp_path):
    path, _, _ = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(KDError, match="truncated or corrupted"):
        load_cache(path, KEY)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(KDError, match="truncated or corrupted"):
        load_cache(path, KEY)


def test_flipped_bytes_are_refused(tmp_path):
    path, _, _ = make(tmp_path)
    data = bytearray(path.read_bytes())
    data[-300] ^= 0xFF  # inside the logits tensor
    path.write_bytes(bytes(data))
    with pytest.raises(KDError, match="corrupted"):
        load_cache(path, KEY)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(KDError, match="not found"):
        load_cache(tmp_path / "nope.safetensors", KEY)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(KDError):
        save_cache(path, torch.zeros(3, 10), torch.zeros(3), KEY)  # wrong shape for KEY
    assert list(tmp_path.iterdir()) == []
