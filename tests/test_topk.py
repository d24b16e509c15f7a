"""Top-k storage: compress_topk keeps the k largest log-probabilities, expand_topk spreads the
rest of the mass evenly (FKD's marginal smoothing), and a top-k cache round-trips through the file."""
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from kd_accel.cache import CacheKey, compress_topk, expand_topk, open_cache, read_metadata, save_cache
from kd_accel.errors import KDError

KEY = CacheKey("mnist", "train", 40, 10, "teacherfp", "datafp", "shift(pad=2)", 3)
FP16_REL = 2.0 ** -11


def round_trip(logits, k):
    logp, index = compress_topk(logits, k)
    return expand_topk(logp, index, logits.shape[-1])


def reference(logits, k):
    """Marginal smoothing computed independently, in float64 numpy, row by row."""
    out = []
    for row in logits.double().numpy():
        p = np.exp(row - row.max())
        p /= p.sum()
        top = np.argsort(-p, kind="stable")[:k]
        q = np.full(len(p), (1 - p[top].sum()) / (len(p) - k))
        q[top] = p[top]
        out.append(q)
    return np.array(out)


# --- compress / expand ------------------------------------------------------------------------------

def test_compress_keeps_the_largest_log_probabilities_sorted():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])
    logp, index = compress_topk(logits, 2)
    assert index.dtype == torch.int64 and logp.dtype == torch.float32
    assert index.tolist() == [[1, 2], [2, 3]]
    lse = [math.log(sum(math.exp(x) for x in row)) for row in logits.tolist()]
    want = [[3.0 - lse[0], 2.0 - lse[0]], [5.0 - lse[1], 4.0 - lse[1]]]
    assert torch.allclose(logp, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("c,k", [(10, 1), (10, 3), (10, 9), (1000, 5), (1000, 50)])
def test_expanded_distribution_sums_to_one_and_matches_a_hand_computation(c, k):
    torch.manual_seed(c + k)
    logits = torch.randn(64, c) * 4
    out = round_trip(logits, k)
    assert out.shape == (64, c) and out.dtype == torch.float32
    assert torch.allclose(out.exp().sum(-1), torch.ones(64), atol=1e-5)
    assert np.allclose(out.exp().double().numpy(), reference(logits, k), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_extreme_logits_stay_finite_and_sum_to_one(k):
    peaked = torch.full((4, 10), -80.0)
    peaked[torch.arange(4), torch.tensor([0, 3, 9, 5])] = 80.0  # the top class holds all but e^-160 of the mass
    out = round_trip(peaked, k)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(-1), torch.ones(4), atol=1e-5)
    assert (out.exp()[torch.arange(4), torch.tensor([0, 3, 9, 5])] > 1 - 1e-6).all()
    assert out.argmax(-1).tolist() == [0, 3, 9, 5]

    equal = round_trip(torch.zeros(4, 10), k)  # all equal: the spread rest is as uniform as the top k
    assert torch.allclose(equal.exp(), torch.full((4, 10), 0.1), atol=1e-6)


def test_a_top_k_holding_a_hair_more_than_everything_is_renormalised():
    """fp16 rounding can make the stored top-k probabilities sum past 1: no NaN, sums to 1."""
    logp = torch.tensor([[math.log(0.7) + 1e-3, math.log(0.3) + 1e-3]])  # sums to ~1.001
    out = expand_topk(logp, torch.tensor([[2, 0]]), 4)
    assert torch.isfinite(out).all() and abs(out.exp().sum().item() - 1) < 1e-6
    assert out.exp()[0, 2] > out.exp()[0, 0] > 0.29 and out.exp()[0, 1] < 1e-30


@pytest.mark.parametrize("probs", [(0.7, 0.1, 0.1, 0.1), (0.7, 0.2, 0.05, 0.05), (0.05, 0.2, 0.7, 0.05)])
def test_the_mass_outside_the_top_k_is_spread_evenly(probs):
    """C = 4, k = 1: whatever the other three held, each gets (1 - 0.7) / 3 = 0.1."""
    logits = torch.tensor([probs]).log()
    out = round_trip(logits, 1).exp()[0]
    want = [0.7 if p == 0.7 else 0.1 for p in probs]
    assert torch.allclose(out, torch.tensor(want), atol=1e-6)


def test_k_equal_to_c_minus_one_reproduces_the_distribution():
    torch.manual_seed(1)
    logits = torch.randn(32, 10) * 3
    out = round_trip(logits, 9)
    assert torch.allclose(out.exp(), torch.softmax(logits, -1), atol=1e-6)
    # the 9 kept entries exactly in log space; the last one is 1 - their sum, so its log carries
    # their float32 rounding (~1e-7 absolute) relative to its own small probability
    want = torch.log_softmax(logits.double(), -1)
    last = want.argmin(-1, keepdim=True)
    kept = torch.ones_like(want, dtype=torch.bool).scatter_(-1, last, False)
    assert torch.allclose(out.double()[kept], want[kept], atol=1e-5)


@pytest.mark.parametrize("k", [0, -1, 10, 11, 2.5, True, "3"])
def test_bad_k_is_refused(tmp_path, k):
    logits = torch.randn(KEY.num_samples, 10)
    with pytest.raises(KDError, match="top-k must be"):
        compress_topk(logits, k)
    with pytest.raises(KDError, match="top-k must be"):
        save_cache(tmp_path / "c.safetensors", logits, torch.zeros(KEY.num_samples), KEY, topk=k)
    assert list(tmp_path.iterdir()) == []


# --- a top-k cache file ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_top_k_cache_round_trip_with_two_views(tmp_path, dtype):
    torch.manual_seed(0)
    logits = torch.randn(2, KEY.num_samples, 10) * 5
    labels = torch.randint(0, 10, (KEY.num_samples,))
    params = torch.randn(2, KEY.num_samples, 5)
    path = tmp_path / "c.safetensors"
    save_cache(path, logits, labels, KEY, dtype, params=params, topk=3)

    meta = read_metadata(path)
    assert meta["storage"] == "top3" and meta["views"] == "2" and meta["dtype"] == dtype
    assert meta["topk_stats"] == "target_logp logit_lse logit_mean logit_std"
    stats = ["logit_lse", "logit_mean", "logit_std", "target_logp"]
    with safe_open(str(path), framework="pt") as f:  # the file as safetensors itself reads it
        assert sorted(f.keys()) == sorted(["labels", "params", "topk_index", "topk_logp", *stats])
        assert f.get_tensor("topk_index").dtype == torch.uint8 and f.get_slice("topk_index").get_shape() == [2, 40, 3]
        assert f.get_tensor("topk_logp").dtype == {"fp32": torch.float32, "fp16": torch.float16}[dtype]
        assert all(f"{n}_sha256" in meta for n in f.keys())
        # per view and sample, fp32 whatever the dtype, from the logits the cache was given
        x = logits.double()
        want = {"logit_lse": x.logsumexp(-1), "logit_mean": x.mean(-1), "logit_std": x.std(-1),
                "target_logp": torch.log_softmax(x, -1).gather(-1, labels.expand(2, -1)[..., None])[..., 0]}
        for name in stats:
            got = f.get_tensor(name)
            assert got.dtype == torch.float32 and got.shape == (2, 40), name
            assert torch.allclose(got.double(), want[name], atol=1e-5), name

    got = open_cache(path, KEY, views=2)
    assert (got.views, got.storage, got.topk) == (2, "top3", 3) and torch.equal(got.labels, labels)
    idx = torch.tensor([39, 0, 5, 5])
    for v in range(2):
        out = got.logits(v)
        assert out.shape == (40, 10) and out.dtype == torch.float32
        assert torch.allclose(out.exp().sum(-1), torch.ones(40), atol=1e-5)
        ref = np.log(reference(logits[v], 3))
        top = np.argsort(-ref, axis=1)[:, :3]
        top_got = np.take_along_axis(out.numpy(), top, 1)
        top_ref = np.take_along_axis(ref, top, 1)
        # the top-k entries are log_softmax of the original, within the stored dtype's rounding
        tol = np.abs(top_ref) * (FP16_REL if dtype == "fp16" else 1e-6) + 1e-5
        assert (np.abs(top_got - top_ref) <= tol).all()
        assert np.allclose(out.exp().numpy(), np.exp(ref), atol=2e-3 if dtype == "fp16" else 1e-6)
        assert torch.equal(got.gather(v, idx), out[idx])
        assert torch.equal(got.params(v), params[v])
    assert open_cache(path).storage == "top3"


def test_top_k_of_fp16_extreme_logits_are_refused_not_written_as_inf(tmp_path):
    logits = torch.zeros(KEY.num_samples, 10)
    logits[0, 0] = 1e5  # log-probabilities of -1e5 for the rest: -inf in fp16
    with pytest.raises(KDError, match="1 of 40 rows of top-k log-probabilities are not finite as fp16"):
        save_cache(tmp_path / "c.safetensors", logits, torch.zeros(KEY.num_samples), KEY, "fp16", topk=3)
    save_cache(tmp_path / "c.safetensors", logits, torch.zeros(KEY.num_samples), KEY, "fp16", topk=1)  # top-1 is 0


def _bytes_per_view(tmp_path, c, topk, dtype="fp16", n=64):
    """File size growth from 1 to 2 views, per view: what one more view costs on disk."""
    key = CacheKey("synthetic", "train", n, c, "t", "d")
    sizes = []
    for views in (1, 2):
        path = tmp_path / f"c{c}_{topk}_{views}.safetensors"
        save_cache(path, torch.randn(views, n, c), torch.zeros(n), key, dtype, topk=topk)
        sizes.append(path.stat().st_size)
    return sizes[1] - sizes[0]


@pytest.mark.parametrize("c", [10, 1000])
def test_top_k_storage_size_per_view(tmp_path, c):
    n, k = 64, 5
    full, topk = _bytes_per_view(tmp_path, c, None, n=n), _bytes_per_view(tmp_path, c, k, n=n)
    # header growth is at most a few bytes (a digit of a shape or offset, 8-byte padding)
    assert abs(full - n * c * 2) <= 16  # fp16 logits
    index_bytes = 1 if c <= 256 else 2  # the smallest integer type that holds the classes
    # fp16 log-probabilities + uint8 / int16 indices + 4 fp32 statistics (16 B)
    assert abs(topk - n * (k * (2 + index_bytes) + 16)) <= 16
    if c == 1000:
        assert topk < full / 50


# --- training from a top-k cache ---------------------------------------------------------------------

def _fit_student(accelerator, cfg, cols, test, objective, epoch_columns, inputs):
    from kd_accel.models import Student
    from kd_accel.training import TrainSpec, fit
    from kd_accel.data import TensorData

    torch.manual_seed(0)
    model = Student()
    fit(accelerator, model, TensorData(cols, epoch_columns), test, TrainSpec.of(cfg.student, cfg.run), objective, "s", inputs=inputs)
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}


@pytest.mark.parametrize("augment", ["none", "shift"])
def test_a_student_trains_from_top_k_rows_expanded_per_batch(accelerator, tmp_path, augment):
    """The loader carries the stored [N, k] columns, never an expanded [N, C] copy, and the student
    trains to the weights the whole expanded cache gives (the earlier, per-epoch expansion)."""
    from conftest import tiny_split
    from kd_accel.augment import get_spec, make_inputs
    from kd_accel.config import from_flags
    from kd_accel.models import Student
    from kd_accel.pipeline import student_data
    from kd_accel.training import TrainSpec, make_objective

    views = 1 if augment == "none" else 2
    train, test = tiny_split(40), tiny_split(20, seed=1)
    spec = get_spec(augment)
    key = CacheKey("mnist", "train", 40, 10, "teacherfp", "datafp", spec.describe(), 0 if views == 1 else 3)
    torch.manual_seed(0)
    params = None if views == 1 else torch.randint(-2, 3, (views, 40, 5)).float()
    path = tmp_path / "c.safetensors"
    save_cache(path, torch.randn(views, 40, 10) * 4, train.labels, key, "fp16", params=params, topk=3)
    soft = open_cache(path, key, views=views)
    cfg = from_flags(epochs=3, batch_size=10, augment=augment, cache_topk=3, **({"views": 2} if views > 1 else {}))
    inputs = None if views == 1 else make_inputs(spec, train.norm)

    data, objective = student_data(cfg, train, soft)
    cols, per_epoch = data.columns, data.per_epoch
    carried = {**cols, **(per_epoch(0) if views > 1 else {})}
    assert "teacher_logits" not in carried and carried["teacher_topk_logp"].shape == (40, 3)
    new = _fit_student(accelerator, cfg, cols, test, objective, per_epoch if views > 1 else None, inputs)

    def without_topk(columns):
        return {k: v for k, v in columns.items() if not k.startswith("teacher_topk")}

    def expanded(epoch):  # the earlier path: each epoch's whole view expanded to [N, C]
        return {**without_topk(per_epoch(epoch)), "teacher_logits": soft.logits(epoch % views)}

    plain = make_objective("hinton", cfg.kd.temperature, cfg.kd.alpha)
    if views == 1:
        old = _fit_student(accelerator, cfg, {**without_topk(cols), "teacher_logits": soft.logits(0)}, test, plain,
                           None, None)
    else:
        old = _fit_student(accelerator, cfg, without_topk(cols), test, plain, expanded, inputs)
    for name in old:
        assert torch.equal(new[name], old[name]), name
    torch.manual_seed(0)
    assert not torch.equal(Student().state_dict()["head.1.weight"], new["head.1.weight"])  # it trained


# --- what the losses need beyond the top k (issue 27) ------------------------------------------------

def test_top_k_statistics_are_columns_and_rebuild_the_logits_losses_standardise(tmp_path):
    """Each view stores the label's log-probability, the log-sum-exp and the logits' mean and std
    (fp32 [K, N]); SoftTargets.columns carries them; topk_logit_estimate gives the top k's and
    the label's logits exactly, the row's own mean, the others equal."""
    from kd_accel.cache import topk_logit_estimate

    torch.manual_seed(3)
    logits, labels = torch.randn(2, 40, 10) * 4, torch.randint(0, 10, (40,))
    path = tmp_path / "c.safetensors"
    save_cache(path, logits, labels, KEY, "fp32", topk=3)
    soft = open_cache(path, KEY, views=2)
    cols = soft.columns(1)
    assert soft.stats == ("teacher_target_logp", "teacher_lse", "teacher_mean", "teacher_std")
    assert all(cols[name].shape == (40,) and cols[name].dtype == torch.float32 for name in soft.stats)
    x = logits[1]
    assert torch.allclose(cols["teacher_std"], x.std(-1), atol=1e-5)
    mask = torch.arange(40) % 2 == 0
    est = topk_logit_estimate(cols, 10, labels, mask)
    top = x.topk(3, -1).indices
    assert torch.allclose(est.gather(-1, top), x.gather(-1, top), atol=1e-4)
    at = labels[:, None]
    assert torch.allclose(est.gather(-1, at)[mask], x.gather(-1, at)[mask], atol=1e-4)  # labelled: exact
    assert torch.allclose(est.mean(-1), x.mean(-1), atol=1e-4)  # the tail from the stored mean
    unlabelled_outside = ~mask & ~(top == at).any(-1)  # a hidden label tells the rebuild nothing
    assert unlabelled_outside.any()
    i = int(unlabelled_outside.nonzero()[0])
    rest = torch.ones(10, dtype=torch.bool).scatter_(0, top[i], False)
    assert torch.allclose(est[i][rest], est[i][rest][0].expand(7))

    with pytest.raises(KDError, match="labels must be class indices 0..9, got 0..10"):
        save_cache(tmp_path / "d.safetensors", logits, torch.arange(40) % 11, KEY, topk=3)
    meta = read_metadata(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    from safetensors.torch import save_file
    save_file(tensors, str(tmp_path / "e.safetensors"), {**meta, "topk_stats": "lse"})
    with pytest.raises(KDError, match="corrupted: metadata topk_stats='lse'"):
        open_cache(tmp_path / "e.safetensors")
