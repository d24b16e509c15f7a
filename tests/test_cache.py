"""The logits cache: K views round-trip exactly (fp32) or within fp16 rounding, every stamp is
checked by name, every tensor is checksummed, and per-view parts make a precompute resumable."""
import dataclasses
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kd_accel.cache import (
    FORMAT_VERSION, CacheKey, CacheMismatch, SoftTargets, load_cache, load_part, open_cache,
    parts_dir, read_metadata, remove_parts, save_cache, save_part,
)
from kd_accel import outputs
from kd_accel.errors import KDError

KEY = CacheKey("mnist", "train", 50, 10, "teacherfp", "datafp", "shift(pad=2)", 7)
FP16_REL = 2.0 ** -11  # fp16 keeps 11 significant bits: round-to-nearest is within half an ulp


def data(views=None, key=KEY, seed=0):
    """logits [N, C] (views=None) or [K, N, C], labels [N], params [K, N, 5]."""
    g = torch.Generator().manual_seed(seed)
    shape = (key.num_samples, key.num_classes) if views is None else (views, key.num_samples, key.num_classes)
    logits = torch.randn(shape, generator=g) * 5
    labels = torch.randint(0, key.num_classes, (key.num_samples,), generator=g)
    params = torch.randn(views or 1, key.num_samples, 5, generator=g)
    return logits, labels, params


def make(tmp_path, dtype="fp32", key=KEY, views=None, params=False, topk=None):
    logits, labels, p = data(views, key)
    path = tmp_path / "c.safetensors"
    save_cache(path, logits, labels, key, dtype, params=p if params else None, topk=topk)
    return path, logits, labels


def stored_tensors(path):
    """Every tensor in a safetensors file, read by safetensors itself (not by kd_accel's reader)."""
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


# --- round trips -----------------------------------------------------------------------------------

def test_round_trip_fp32(tmp_path):
    path, logits, labels = make(tmp_path)
    got = load_cache(path, KEY)
    assert isinstance(got, SoftTargets) and got.views == 1 and got.storage == "full"
    assert torch.equal(got.logits(0), logits) and torch.equal(got.labels, labels)
    assert got.params(0) is None
    meta = read_metadata(path)
    assert meta["dtype"] == "fp32" and meta["num_samples"] == "50" and meta["format_version"] == FORMAT_VERSION == "3"
    assert meta["views"] == "1" and meta["storage"] == "full"
    assert meta["augment"] == "shift(pad=2)" and meta["augment_seed"] == "7"
    assert {n: tuple(t.shape) for n, t in stored_tensors(path).items()} == {"logits": (1, 50, 10), "labels": (50,)}


def test_round_trip_fp16(tmp_path):
    path, logits, _ = make(tmp_path, "fp16")
    got = load_cache(path, KEY).logits(0)
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), logits, atol=1e-2)
    assert ((got.float() - logits).abs() <= logits.abs() * FP16_REL).all()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_round_trip_three_views_with_params(tmp_path, dtype):
    path, logits, labels = make(tmp_path, dtype, views=3, params=True)
    _, _, params = data(3)
    got = load_cache(path, KEY, views=3)
    assert (got.views, got.num_samples, got.num_classes) == (3, 50, 10) and got.meta["views"] == "3"
    assert torch.equal(got.labels, labels)
    for v in range(3):
        out = got.logits(v)
        assert out.shape == (50, 10) and out.dtype == {"fp32": torch.float32, "fp16": torch.float16}[dtype]
        if dtype == "fp32":
            assert torch.equal(out, logits[v])
        else:
            assert ((out.float() - logits[v]).abs() <= logits[v].abs() * FP16_REL).all()
        assert got.params(v).dtype == torch.float32 and torch.equal(got.params(v), params[v])  # always fp32
    assert not torch.equal(got.logits(0), got.logits(1))  # views are kept apart, not one repeated


def test_logits_of_a_view_is_a_slice_of_the_mapping(tmp_path):
    path, _, _ = make(tmp_path, "fp16", views=3)
    got = load_cache(path, KEY, views=3)
    a, b = got.logits(0), got.logits(1)
    assert b.data_ptr() - a.data_ptr() == 50 * 10 * 2  # consecutive rows of one mapped tensor: no copy
    assert got.logits(0).data_ptr() == a.data_ptr()


def test_gather_equals_indexing(tmp_path):
    path, logits, _ = make(tmp_path, views=3, params=True)
    got = load_cache(path, KEY, views=3)
    idx = torch.tensor([49, 0, 7, 7, 23])
    for v in range(3):
        assert torch.equal(got.gather(v, idx), logits[v][idx])
        assert torch.equal(got.gather(v, idx), got.logits(v)[idx])


def test_a_view_out_of_range_is_refused(tmp_path):
    path, _, _ = make(tmp_path, views=2)
    got = load_cache(path, KEY)
    for bad in (2, -1):
        with pytest.raises(KDError, match="out of range"):
            got.logits(bad)
        with pytest.raises(KDError, match="out of range"):
            got.gather(bad, torch.tensor([0]))


def test_open_cache_without_a_key(tmp_path):
    path, logits, _ = make(tmp_path, views=2)
    got = open_cache(path)
    assert got.views == 2 and torch.equal(got.logits(1), logits[1])


# --- stamps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "field,value,words",
    [
        ("teacher_fingerprint", "other", "teacher weights changed"),
        ("data_fingerprint", "other", "training data changed"),
        ("num_classes", 11, "class count differs"),
        ("num_samples", 49, "sample count differs"),
        ("dataset", "fashion-mnist", "data set differs"),
        ("split", "test", "split differs"),
        ("augment", "shift(pad=4)", "augmentation differs"),
        ("augment", "none", "augmentation differs"),
        ("augment_seed", 8, "augmentation seed differs"),
    ],
)
def test_every_mismatch_is_refused_by_name(tmp_path, field, value, words):
    path, _, _ = make(tmp_path)
    with pytest.raises(CacheMismatch, match=words):
        load_cache(path, dataclasses.replace(KEY, **{field: value}))


def test_every_differing_stamp_is_named_at_once(tmp_path):
    path, _, _ = make(tmp_path)
    with pytest.raises(CacheMismatch) as e:
        load_cache(path, dataclasses.replace(KEY, teacher_fingerprint="x", augment="none", augment_seed=1))
    msg = str(e.value)
    assert "teacher weights changed" in msg and "augmentation differs" in msg and "augmentation seed differs" in msg
    assert "\n" not in msg


def test_key_defaults_to_no_augmentation():
    key = CacheKey("mnist", "train", 50, 10, "t", "d")
    assert (key.augment, key.augment_seed) == ("none", 0)
    assert list(key.as_metadata())[:6] == ["dataset", "split", "num_samples", "num_classes", "teacher_fingerprint",
                                           "data_fingerprint"]


def test_fewer_views_than_needed_are_refused_by_name_more_are_fine(tmp_path):
    path, logits, _ = make(tmp_path, views=3)
    with pytest.raises(CacheMismatch, match="holds 3 views, the run needs 5"):
        load_cache(path, KEY, views=5)
    with pytest.raises(CacheMismatch, match="holds 3 views, the run needs 5"):
        open_cache(path, views=5)
    got = load_cache(path, KEY, views=2)  # a run of 2 views reads the first 2
    assert got.views == 3 and torch.equal(got.logits(1), logits[1])
    assert load_cache(path, KEY, views=3).views == 3


def test_a_version_2_cache_is_refused_by_name(tmp_path):
    """A cache as version 2 wrote it: logits [N, C], labels, no views, storage or augmentation."""
    logits, labels, _ = data()
    meta = {"format_version": "2", "dataset": "mnist", "split": "train", "num_samples": "50", "num_classes": "10",
            "teacher_fingerprint": "teacherfp", "data_fingerprint": "datafp", "dtype": "fp32",
            "logits_sha256": "0" * 32, "labels_sha256": "0" * 32}
    path = tmp_path / "old.safetensors"
    save_file({"logits": logits, "labels": labels}, str(path), metadata=meta)
    for load in (lambda: load_cache(path, KEY), lambda: open_cache(path)):
        with pytest.raises(CacheMismatch, match="format version '2', this kd_accel reads '3'"):
            load()
    check_cache_target(path)  # still a kd_accel cache: precompute may overwrite it


def check_cache_target(path):
    outputs.check([outputs.Output("--out", path, "cache")], [])


def test_check_cache_target_accepts_a_cache_refuses_other_files(tmp_path):
    path, _, _ = make(tmp_path, views=2, topk=3)
    check_cache_target(path)
    other = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(KDError, match="exists and is not a kd_accel teacher-logits cache"):
        check_cache_target(other)


# --- corrupted files -------------------------------------------------------------------------------

@pytest.mark.parametrize("views", [None, 3])
def test_truncated_file_is_refused(tmp_path, views):
    path, _, _ = make(tmp_path, views=views, params=True)
    data_ = path.read_bytes()
    path.write_bytes(data_[: len(data_) - 100])
    with pytest.raises(KDError, match="truncated or corrupted") as e:
        load_cache(path, KEY)
    assert "\n" not in str(e.value)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(KDError, match="truncated or corrupted"):
        load_cache(path, KEY)


def test_flipped_bytes_are_refused(tmp_path):
    path, _, _ = make(tmp_path)
    data_ = bytearray(path.read_bytes())
    data_[-300] ^= 0xFF  # inside the logits tensor
    path.write_bytes(bytes(data_))
    with pytest.raises(KDError, match="corrupted"):
        load_cache(path, KEY)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(KDError, match="not found"):
        load_cache(tmp_path / "nope.safetensors", KEY)


def _tensor_range(path, name):
    """Byte range of tensor `name` inside a safetensors file (8-byte length, JSON header, data)."""
    data_ = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data_[:8])
    start, end = json.loads(data_[8 : 8 + hlen])[name]["data_offsets"]
    return 8 + hlen + start, 8 + hlen + end


@pytest.mark.parametrize("name,topk", [("logits", None), ("labels", None), ("params", None), ("labels", 3),
                                       ("topk_logp", 3), ("topk_index", 3), ("params", 3)])
def test_every_stored_tensor_is_checksummed(tmp_path, name, topk):
    path, _, _ = make(tmp_path, views=2, params=True, topk=topk)
    assert load_cache(path, KEY, views=2)  # valid before the flip
    start, end = _tensor_range(path, name)
    data_ = bytearray(path.read_bytes())
    data_[start] ^= 0x01  # a label 3 becomes 2, an index 4 becomes 5: still valid, only the checksum sees it
    path.write_bytes(bytes(data_))
    with pytest.raises(KDError, match=f"checksum of the {name} does not match"):
        load_cache(path, KEY)
    load_cache(path, KEY, verify=False)  # verify=False skips exactly that check


# --- what save_cache refuses ------------------------------------------------------------------------

def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(KDError):
        save_cache(path, torch.zeros(3, 10), torch.zeros(3), KEY)  # wrong shape for KEY
    with pytest.raises(KDError, match=r"expected \[K, 50, 10\]"):
        save_cache(path, torch.zeros(2, 50, 11), torch.zeros(50), KEY)
    with pytest.raises(KDError, match="do not match"):
        save_cache(path, torch.zeros(50, 10), torch.zeros(49), KEY)
    with pytest.raises(KDError, match="dtype must be one of fp32, fp16"):
        save_cache(path, torch.zeros(50, 10), torch.zeros(50), KEY, "bf16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(3, 49, 5), (2, 50, 5), (50, 5), (3, 50), (150, 5)])
def test_params_of_the_wrong_shape_are_refused(tmp_path, shape):
    logits, labels, _ = data(3)
    with pytest.raises(KDError, match=r"augmentation params .* expected \[3, 50, P\]"):
        save_cache(tmp_path / "c.safetensors", logits, labels, KEY, params=torch.zeros(shape))
    assert list(tmp_path.iterdir()) == []


def test_one_view_takes_params_with_or_without_the_view_axis(tmp_path):
    logits, labels, params = data()
    for p in (params, params[0]):
        save_cache(tmp_path / "c.safetensors", logits, labels, KEY, params=p)
        assert torch.equal(load_cache(tmp_path / "c.safetensors", KEY).params(0), params[0])


def test_non_finite_logits_are_never_written(tmp_path):
    path = tmp_path / "c.safetensors"
    logits = torch.zeros(KEY.num_samples, KEY.num_classes)
    logits[3, 1] = float("nan")
    logits[7, 0] = 1e5  # finite in fp32, inf in fp16
    with pytest.raises(KDError, match="2 of 50 rows of logits are not finite as fp16"):
        save_cache(path, logits, torch.zeros(KEY.num_samples), KEY, "fp16")
    views = torch.zeros(3, KEY.num_samples, KEY.num_classes)
    views[2, 0, 0] = float("inf")
    with pytest.raises(KDError, match="1 of 150 rows of logits are not finite as fp32"):
        save_cache(path, views, torch.zeros(KEY.num_samples), KEY, "fp32")
    with pytest.raises(KDError, match="1 of 150 rows of logits are not finite"):
        save_cache(path, views, torch.zeros(KEY.num_samples), KEY, "fp16", topk=3)
    params = torch.zeros(3, KEY.num_samples, 5)
    params[1, 4, 2] = float("nan")
    with pytest.raises(KDError, match="1 of 150 rows of augmentation params are not finite"):
        save_cache(path, torch.zeros_like(views), torch.zeros(KEY.num_samples), KEY, params=params)
    assert list(tmp_path.iterdir()) == []


# --- per-view parts: a resumable precompute --------------------------------------------------------

def test_parts_live_in_a_hidden_folder_beside_the_cache(tmp_path):
    out = tmp_path / "run" / "teacher_logits.safetensors"
    assert parts_dir(out) == tmp_path / "run" / ".teacher_logits.safetensors.views"


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_part_round_trip(tmp_path, dtype):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    save_part(out, 0, logits[0], params[0], KEY, dtype)
    save_part(out, 1, logits[1], None, KEY, dtype)
    got0, p0 = load_part(out, 0, KEY, dtype)
    got1, p1 = load_part(out, 1, KEY, dtype)
    if dtype == "fp32":
        assert torch.equal(got0, logits[0]) and torch.equal(got1, logits[1])
    else:
        assert got0.dtype == torch.float16
        assert ((got0.float() - logits[0]).abs() <= logits[0].abs() * FP16_REL).all()
    assert torch.equal(p0, params[0]) and p1 is None
    got0 += 1  # a copy the caller may change, not the read-only mapping
    assert load_part(out, 2, KEY, dtype) is None  # not computed yet
    assert not out.exists()  # parts are not the cache


@pytest.mark.parametrize("change", [
    {"teacher_fingerprint": "other"}, {"augment": "none"}, {"augment_seed": 8}, {"num_samples": 49}, {"dtype": "fp16"},
])
def test_a_part_made_for_another_run_is_deleted_not_used(tmp_path, change):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(1)
    save_part(out, 0, logits[0], params[0], KEY, "fp32")
    part = next(parts_dir(out).iterdir())
    key = dataclasses.replace(KEY, **{k: v for k, v in change.items() if k != "dtype"})
    assert load_part(out, 0, key, change.get("dtype", "fp32")) is None
    assert not part.exists()


def test_a_part_renamed_to_another_view_is_deleted(tmp_path):
    out = tmp_path / "c.safetensors"
    logits, _, _ = data(2)
    save_part(out, 0, logits[0], None, KEY, "fp32")
    save_part(out, 1, logits[1], None, KEY, "fp32")
    a, b = sorted(parts_dir(out).iterdir())
    a.replace(b)  # view 0's file where view 1 belongs
    assert load_part(out, 1, KEY, "fp32") is None and not b.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_part_is_deleted_and_recomputed(tmp_path, damage):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(1)
    save_part(out, 0, logits[0], params[0], KEY, "fp32")
    part = next(parts_dir(out).iterdir())
    raw = bytearray(part.read_bytes())
    if damage == "truncate":
        part.write_bytes(bytes(raw[:-100]))
    elif damage == "flip":
        start, _ = _tensor_range(part, "logits")
        raw[start + 40] ^= 0x01
        part.write_bytes(bytes(raw))
    else:
        part.write_bytes(b"")
    assert load_part(out, 0, KEY, "fp32") is None and not part.exists()
    save_part(out, 0, logits[0], params[0], KEY, "fp32")  # the caller recomputes it
    assert torch.equal(load_part(out, 0, KEY, "fp32")[0], logits[0])


def test_save_part_refuses_wrong_shapes(tmp_path):
    out = tmp_path / "c.safetensors"
    with pytest.raises(KDError, match=r"expected \[50, 10\]"):
        save_part(out, 0, torch.zeros(49, 10), None, KEY, "fp32")
    with pytest.raises(KDError, match="augmentation params"):
        save_part(out, 0, torch.zeros(50, 10), torch.zeros(49, 5), KEY, "fp32")
    assert not parts_dir(out).exists()  # refused before anything is written


def test_a_killed_precompute_resumes_at_the_first_missing_view(tmp_path):
    """Views 0 and 1 of 3 were finished before the kill: only view 2 is computed again; the cache
    assembled from the parts equals the one a single run writes; then the parts are removed."""
    out = tmp_path / "c.safetensors"
    logits, labels, params = data(3)
    for v in (0, 1):
        save_part(out, v, logits[v], params[v], KEY, "fp16")
    computed = []
    views = []
    for v in range(3):
        part = load_part(out, v, KEY, "fp16")
        if part is None:
            computed.append(v)
            save_part(out, v, logits[v], params[v], KEY, "fp16")
            part = load_part(out, v, KEY, "fp16")
        views.append(part)
    assert computed == [2]
    save_cache(out, torch.stack([lg for lg, _ in views]), labels, KEY, "fp16", params=torch.stack([p for _, p in views]))
    assert parts_dir(out).is_dir()  # the cache's own write leaves the parts alone
    remove_parts(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    got = load_cache(out, KEY, views=3)
    assert torch.equal(got.logits(2), logits[2].half()) and torch.equal(got.params(1), params[1])
    remove_parts(out)  # nothing left to remove: no error
