import dataclasses

import pytest
import torch

from kd_accel.cache import FORMAT_VERSION, CacheKey, load_cache, read_metadata, save_cache
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
    assert meta["dtype"] == "fp32" and meta["num_samples"] == "50" and meta["format_version"] == FORMAT_VERSION == "2"


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


def _tensor_range(path, name):
    """Byte range of tensor `name` inside a safetensors file (8-byte length, JSON header, data)."""
    import json
    import struct

    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + hlen])[name]["data_offsets"]
    return 8 + hlen + start, 8 + hlen + end


@pytest.mark.parametrize("name", ["logits", "labels"])
def test_every_stored_tensor_is_checksummed(tmp_path, name):
    path, _, _ = make(tmp_path)
    start, _ = _tensor_range(path, name)
    data = bytearray(path.read_bytes())
    data[start] ^= 0x01  # a label 3 becomes 2: still a valid label, only the checksum sees it
    path.write_bytes(bytes(data))
    with pytest.raises(KDError, match=f"checksum of the {name} does not match"):
        load_cache(path, KEY)


def test_non_finite_logits_are_never_written(tmp_path):
    path = tmp_path / "c.safetensors"
    logits = torch.zeros(KEY.num_samples, KEY.num_classes)
    logits[3, 1] = float("nan")
    logits[7, 0] = 1e5  # finite in fp32, inf in fp16
    with pytest.raises(KDError, match="2 of 50 rows of logits are not finite as fp16"):
        save_cache(path, logits, torch.zeros(KEY.num_samples), KEY, "fp16")
    assert list(tmp_path.iterdir()) == []
