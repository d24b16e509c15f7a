"""The logits cache: K views round-trip exactly (fp32) or within fp16 rounding, every stamp is
checked by name, every tensor is checksummed, and the writer's partial file makes a precompute
resumable per view."""
import dataclasses
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kd_accel.cache import (
    FORMAT_VERSION, CacheKey, CacheMismatch, CacheWriter, SoftTargets, open_cache, partial_paths, read_metadata,
    save_cache,
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
    got = open_cache(path, KEY)
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
    got = open_cache(path, KEY).logits(0)
    assert got.dtype == torch.float16
    assert torch.allclose(got.float(), logits, atol=1e-2)
    assert ((got.float() - logits).abs() <= logits.abs() * FP16_REL).all()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_round_trip_three_views_with_params(tmp_path, dtype):
    path, logits, labels = make(tmp_path, dtype, views=3, params=True)
    _, _, params = data(3)
    got = open_cache(path, KEY, views=3)
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
    got = open_cache(path, KEY, views=3)
    a, b = got.logits(0), got.logits(1)
    assert b.data_ptr() - a.data_ptr() == 50 * 10 * 2  # consecutive rows of one mapped tensor: no copy
    assert got.logits(0).data_ptr() == a.data_ptr()


def test_gather_equals_indexing(tmp_path):
    path, logits, _ = make(tmp_path, views=3, params=True)
    got = open_cache(path, KEY, views=3)
    idx = torch.tensor([49, 0, 7, 7, 23])
    for v in range(3):
        assert torch.equal(got.gather(v, idx), logits[v][idx])
        assert torch.equal(got.gather(v, idx), got.logits(v)[idx])


def test_a_view_out_of_range_is_refused(tmp_path):
    path, _, _ = make(tmp_path, views=2)
    got = open_cache(path, KEY)
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
        open_cache(path, dataclasses.replace(KEY, **{field: value}))


def test_every_differing_stamp_is_named_at_once(tmp_path):
    path, _, _ = make(tmp_path)
    with pytest.raises(CacheMismatch) as e:
        open_cache(path, dataclasses.replace(KEY, teacher_fingerprint="x", augment="none", augment_seed=1))
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
        open_cache(path, KEY, views=5)
    with pytest.raises(CacheMismatch, match="holds 3 views, the run needs 5"):
        open_cache(path, views=5)
    got = open_cache(path, KEY, views=2)  # a run of 2 views reads the first 2
    assert got.views == 3 and torch.equal(got.logits(1), logits[1])
    assert open_cache(path, KEY, views=3).views == 3


def test_a_version_2_cache_is_refused_by_name(tmp_path):
    """A cache as version 2 wrote it: logits [N, C], labels, no views, storage or augmentation."""
    logits, labels, _ = data()
    meta = {"format_version": "2", "dataset": "mnist", "split": "train", "num_samples": "50", "num_classes": "10",
            "teacher_fingerprint": "teacherfp", "data_fingerprint": "datafp", "dtype": "fp32",
            "logits_sha256": "0" * 32, "labels_sha256": "0" * 32}
    path = tmp_path / "old.safetensors"
    save_file({"logits": logits, "labels": labels}, str(path), metadata=meta)
    for load in (lambda: open_cache(path, KEY), lambda: open_cache(path)):
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
        open_cache(path, KEY)
    assert "\n" not in str(e.value)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(KDError, match="truncated or corrupted"):
        open_cache(path, KEY)


def test_flipped_bytes_are_refused(tmp_path):
    path, _, _ = make(tmp_path)
    data_ = bytearray(path.read_bytes())
    data_[-300] ^= 0xFF  # inside the logits tensor
    path.write_bytes(bytes(data_))
    with pytest.raises(KDError, match="corrupted"):
        open_cache(path, KEY)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(KDError, match="not found"):
        open_cache(tmp_path / "nope.safetensors", KEY)


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
    assert open_cache(path, KEY, views=2)  # valid before the flip
    start, end = _tensor_range(path, name)
    data_ = bytearray(path.read_bytes())
    data_[start] ^= 0x01  # a label 3 becomes 2, an index 4 becomes 5: still valid, only the checksum sees it
    path.write_bytes(bytes(data_))
    with pytest.raises(KDError, match=f"checksum of the {name} does not match"):
        open_cache(path, KEY)
    open_cache(path, KEY, verify=False)  # verify=False skips exactly that check


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
        assert torch.equal(open_cache(tmp_path / "c.safetensors", KEY).params(0), params[0])


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


# --- the partial file: a resumable precompute ------------------------------------------------------

def writer(out, dtype="fp32", key=KEY, views=2, params=True):
    _, labels, _ = data(views)
    return CacheWriter(out, key, views, labels, dtype, params_cols=5 if params else None)


def write_view(w, v, logits, params=None, order=None):
    """View v's rows in shuffled batches of 7, as a precompute's ranks hand them over."""
    order = torch.randperm(KEY.num_samples, generator=torch.Generator().manual_seed(v)) if order is None else order
    for rows in order.split(7):
        w.write(v, rows, logits[v, rows], None if params is None else params[v, rows])
    w.view_done(v)


def test_the_partial_file_lives_hidden_beside_the_cache(tmp_path):
    out = tmp_path / "run" / "teacher_logits.safetensors"
    assert partial_paths(out) == (tmp_path / "run" / ".teacher_logits.safetensors.partial",
                                  tmp_path / "run" / ".teacher_logits.safetensors.partial.json")


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_finished_view_resumes_as_written(tmp_path, dtype):
    """View 0 finished, view 1 written but not finished (killed): a new writer keeps view 0
    only; the cache it finishes holds view 0 as first written (fp32 exact, fp16 within
    rounding) and its parameters; the partial file is not the cache."""
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    w = writer(out, dtype)
    write_view(w, 0, logits, params)
    for rows in torch.arange(KEY.num_samples).split(7)[:3]:
        w.write(1, rows, logits[1, rows], params[1, rows])
    del w
    assert not out.exists()  # the partial file is not the cache
    again = writer(out, dtype)
    assert again.done == {0}  # not computed yet: view 1
    write_view(again, 1, logits, params)
    again.finish()
    got = open_cache(out, KEY, views=2)
    for v in range(2):
        if dtype == "fp32":
            assert torch.equal(got.logits(v), logits[v])
        else:
            assert got.logits(v).dtype == torch.float16
            assert ((got.logits(v).float() - logits[v]).abs() <= logits[v].abs() * FP16_REL).all()
        assert torch.equal(got.params(v), params[v])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.parametrize("change", [
    {"teacher_fingerprint": "other"}, {"augment": "none"}, {"augment_seed": 8}, {"num_samples": 49}, {"dtype": "fp16"},
    {"views": 3}, {"params": False},
])
def test_a_partial_file_made_for_another_run_is_started_over_not_used(tmp_path, change):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    w = writer(out)
    write_view(w, 0, logits, params)
    del w
    key = dataclasses.replace(KEY, **{k: v for k, v in change.items() if k in KEY.__dict__})
    if "num_samples" in change:
        again = CacheWriter(out, key, 2, torch.zeros(49, dtype=torch.long), "fp32", params_cols=5)
    else:
        again = writer(out, change.get("dtype", "fp32"), key, change.get("views", 2), change.get("params", True))
    assert again.done == set()
    assert not partial_paths(out)[1].exists()  # the old list of finished views is gone with its file


def test_views_swapped_in_the_partial_file_are_recomputed(tmp_path):
    """View 0's rows where view 1's belong (and the reverse): neither matches its checksum."""
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    w = writer(out)
    write_view(w, 0, logits, params)
    write_view(w, 1, logits, params)
    a = w.arrays["logits"]
    a[[0, 1]] = a[[1, 0]]
    a.flush()
    del w
    assert writer(out).done == set()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_partial_file_is_recomputed(tmp_path, damage):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    w = writer(out)
    write_view(w, 0, logits, params)
    write_view(w, 1, logits, params)
    del w
    tmp, state = partial_paths(out)
    raw = bytearray(tmp.read_bytes())
    if damage == "truncate":
        tmp.write_bytes(bytes(raw[:-100]))
    elif damage == "flip":
        start, _ = _tensor_range(tmp, "logits")
        raw[start + 40] ^= 0x01  # a row of view 0
        tmp.write_bytes(bytes(raw))
    else:
        state.write_bytes(b"")
    again = writer(out)
    assert again.done == ({1} if damage == "flip" else set())
    for v in sorted({0, 1} - again.done):  # the caller recomputes what is not kept
        write_view(again, v, logits, params)
    again.finish()
    got = open_cache(out, KEY, views=2)
    assert torch.equal(got.logits(0), logits[0]) and torch.equal(got.logits(1), logits[1])


def test_the_writer_refuses_wrong_shapes(tmp_path):
    out = tmp_path / "c.safetensors"
    with pytest.raises(KDError, match=r"labels \(49,\), expected \(50,\)"):
        CacheWriter(out, KEY, 2, torch.zeros(49, dtype=torch.long), "fp32", params_cols=5)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    w = writer(out)
    rows = torch.arange(7)
    with pytest.raises(KDError, match=r"expected \[7, 10\]"):
        w.write(0, rows, torch.zeros(7, 11), torch.zeros(7, 5))
    with pytest.raises(KDError, match=r"expected \[7, 10\] and \[7, 5\]"):
        w.write(0, rows, torch.zeros(7, 10), torch.zeros(7, 4))


def test_a_view_not_finite_as_stored_is_refused(tmp_path):
    out = tmp_path / "c.safetensors"
    logits, _, params = data(2)
    logits[0, 3, 1] = 1e5  # finite in fp32, inf in fp16
    w = writer(out, "fp16")
    for rows in torch.arange(KEY.num_samples).split(7):
        w.write(0, rows, logits[0, rows], params[0, rows])
    with pytest.raises(KDError, match=r"1 of 50 rows of logits \(view 0\) are not finite as fp16"):
        w.view_done(0)
    assert w.done == set()


def test_a_killed_precompute_resumes_at_the_first_missing_view(tmp_path):
    """Views 0 and 1 of 3 were finished before the kill: only view 2 is computed again; the cache
    it finishes equals the one a single run writes; then the partial file is gone."""
    out, whole = tmp_path / "c.safetensors", tmp_path / "whole" / "c.safetensors"
    logits, labels, params = data(3)
    w = CacheWriter(out, KEY, 3, labels, "fp16", params_cols=5)
    for v in (0, 1):
        write_view(w, v, logits, params)
    del w
    w = CacheWriter(out, KEY, 3, labels, "fp16", params_cols=5)
    computed = [v for v in range(3) if v not in w.done]
    for v in computed:
        write_view(w, v, logits, params)
    assert computed == [2]
    w.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    save_cache(whole, logits, labels, KEY, "fp16", params=params)
    got, want = stored_tensors(out), stored_tensors(whole)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert read_metadata(out) == read_metadata(whole)
    assert torch.equal(open_cache(out, KEY, views=3).logits(2), logits[2].half())


def test_a_cache_column_pickles_maps_once_and_follows_a_rewritten_cache(tmp_path):
    """SoftTargets.column: the small picklable reader a DataLoader worker calls for a K-view
    cache's crops (the data layer imports no cache module): the stored tensor, memory-mapped once
    per process; a cache rewritten at the same path (another checksum) is mapped anew."""
    import pickle

    path, _, _ = make(tmp_path, views=2, params=True)
    _, _, params = data(2)
    column = pickle.loads(pickle.dumps(open_cache(path, KEY, views=2).column("params")))
    assert torch.equal(column(), params) and column().data_ptr() == column().data_ptr()  # one mapping
    save_cache(path, *data(2, seed=1)[:2], KEY, params=data(2, seed=1)[2])
    again = open_cache(path, KEY, views=2).column("params")
    assert again != column and torch.equal(again(), data(2, seed=1)[2])


def test_a_cache_column_refuses_a_cache_replaced_before_it_is_first_read(tmp_path):
    """A worker first reads the column after the main process validated the cache: if another
    run replaced the file meanwhile, its crops would be replayed for this run's logits; the
    header's checksum of the tensor must still be the validated one, else one line."""
    path, _, _ = make(tmp_path, views=2, params=True)
    column = open_cache(path, KEY, views=2).column("params")  # validated, not read yet
    save_cache(path, *data(2, seed=2)[:2], KEY, params=data(2, seed=2)[2])  # replaced meanwhile
    with pytest.raises(KDError, match="was replaced after this run validated it"):
        column()
