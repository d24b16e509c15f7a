
import torch

from kd_accel.config import from_flags, with_flags
from kd_accel.models import Student
from kd_accel.pipeline import columns
from kd_accel.training import TrainSpec, fit, lr_lambda, make_objective
from kd_accel.data import TensorData

from conftest import tiny_split, reset_accelerate_state


def test_student_step_reads_teacher_row_by_sample_index(accelerator):
    """A cache whose row i encodes i: under shuffling every step must see row idx[j] for sample j."""
    train = tiny_split(96)
    test = tiny_split(20, seed=1)
    n = len(train)
    cache = torch.zeros(n, 10)
    cache[:, 0] = torch.arange(n, dtype=torch.float32)  # row i says "I am row i"
    real = make_objective("hinton", 2.0, 0.5)
    seen = []

    def spy(logits, batch):
        assert torch.equal(batch["teacher_logits"][:, 0].long(), batch["idx"])
        assert torch.equal(batch["images"], train.images[batch["idx"]])
        assert torch.equal(batch["labels"], train.labels[batch["idx"]])
        seen.append(batch["idx"].clone())
        return real(logits, batch)

    cfg = from_flags(epochs=2, batch_size=10)
    fit(accelerator, Student(), TensorData(columns(train, teacher_logits=cache)), test, TrainSpec.of(cfg.student, cfg.run), spy, "spy")
    order = torch.cat(seen)
    assert len(order) == 2 * n
    assert sorted(order[:n].tolist()) == list(range(n))
    assert not torch.equal(order[:n], torch.arange(n))  # it really was shuffled
    assert not torch.equal(order[:n], order[n:])  # and reshuffled each epoch


def test_training_reduces_loss_and_is_reproducible(accelerator):
    train = tiny_split(200)
    train.labels = (train.images.float().mean(dim=(1, 2, 3)) > 127.5).long()  # learnable rule
    cfg = from_flags(epochs=3, batch_size=20, lr=3e-3)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model, hist = fit(accelerator, Student(), TensorData(columns(train)), train, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "t")
        results.append((model.state_dict(), hist))
    losses = [e["loss_loss"] for e in results[0][1]["epochs"]]
    assert losses[-1] < losses[0]
    for k, v in results[0][0].items():
        assert torch.equal(v, results[1][0][k]), k


def test_cosine_schedule_ends_at_zero():
    f = lr_lambda("cosine", 100)
    assert f(0) == 1.0 and abs(f(50) - 0.5) < 1e-9 and f(100) < 1e-12
    assert lr_lambda("constant", 100)(77) == 1.0


def _record_fit(monkeypatch):
    """Wrap the phases' fit: per call, the model's initial weights and every batch's sample indices."""
    from kd_accel import phases

    calls, real_fit = [], phases.fit

    def spy_fit(accelerator, model, data, test, spec, objective, label, *rest, **kwargs):
        rec = {"label": label, "init": {k: v.clone() for k, v in model.state_dict().items()}, "order": []}
        calls.append(rec)

        def spy(logits, batch):
            rec["order"].append(batch["idx"].clone())
            return objective(logits, batch)

        return real_fit(accelerator, model, data, test, spec, spy, label, *rest, **kwargs)

    monkeypatch.setattr(phases, "fit", spy_fit)
    return calls


def test_seed_fixes_weights_and_data_order_under_one_accelerator(accelerator, monkeypatch, tmp_path):
    """compare.py trains every seed under one Accelerator (the scripts' own, made from the
    first seed): each seed must still get its own initial weights *and* its own data order, and
    the baseline and the distilled student of one seed the same of both (the pairing of the
    paired t-test)."""
    from kd_accel.pipeline import make_accelerator, train_student

    calls = _record_fit(monkeypatch)
    train, test = tiny_split(120), tiny_split(20, seed=1)
    cache = torch.randn(len(train), 10)
    base = from_flags(epochs=2, batch_size=20, output_dir=str(tmp_path))
    reset_accelerate_state()
    accelerator = make_accelerator(with_flags(base, seed=1), cpu=True)
    for seed in (1, 2, 3):
        cfg = with_flags(base, seed=seed)
        train_student(accelerator, cfg, train, test, cache, f"student{seed}")
        train_student(accelerator, cfg, train, test, None, f"baseline{seed}")
    orders = {c["label"]: torch.cat(c["order"]) for c in calls}
    inits = {c["label"]: c["init"] for c in calls}
    for seed in (1, 2, 3):  # paired: same order (both epochs) and same initial weights
        assert torch.equal(orders[f"student{seed}"], orders[f"baseline{seed}"])
        for k, v in inits[f"student{seed}"].items():
            assert torch.equal(v, inits[f"baseline{seed}"][k]), k
    for a, b in ((1, 2), (1, 3), (2, 3)):  # other seeds: other first batch, other weights
        assert not torch.equal(orders[f"student{a}"][:20], orders[f"student{b}"][:20])
        assert not torch.equal(inits[f"student{a}"]["features.0.weight"], inits[f"student{b}"]["features.0.weight"])
    n = len(train)
    for o in orders.values():  # each epoch a permutation, and a new one
        assert sorted(o[:n].tolist()) == list(range(n)) and not torch.equal(o[:n], o[n:])


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
    from kd_accel.data import EpochPermutation

    a, b = EpochPermutation(50, 7), EpochPermutation(50, 7)
    torch.manual_seed(0)
    pa = list(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert list(b) == pa
    b.set_epoch(1)
    assert list(b) != pa and sorted(b) == list(range(50))
    assert list(EpochPermutation(50, 8)) != pa

