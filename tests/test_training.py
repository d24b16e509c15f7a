import dataclasses

import torch

from kd_accel.config import Config
from kd_accel.models import Student
from kd_accel.pipeline import columns
from kd_accel.training import fit, lr_lambda, make_objective

from conftest import tiny_split


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

    cfg = dataclasses.replace(Config(), epochs=2, batch_size=10)
    fit(accelerator, Student(), columns(train, teacher_logits=cache), test, cfg, spy, "spy")
    order = torch.cat(seen)
    assert len(order) == 2 * n
    assert sorted(order[:n].tolist()) == list(range(n))
    assert not torch.equal(order[:n], torch.arange(n))  # it really was shuffled
    assert not torch.equal(order[:n], order[n:])  # and reshuffled each epoch


def test_training_reduces_loss_and_is_reproducible(accelerator):
    train = tiny_split(200)
    train.labels = (train.images.float().mean(dim=(1, 2, 3)) > 127.5).long()  # learnable rule
    cfg = dataclasses.replace(Config(), epochs=3, batch_size=20, lr=3e-3)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model, hist = fit(accelerator, Student(), columns(train), train, cfg, make_objective("ce"), "t")
        results.append((model.state_dict(), hist))
    losses = [e["loss_loss"] for e in results[0][1]["epochs"]]
    assert losses[-1] < losses[0]
    for k, v in results[0][0].items():
        assert torch.equal(v, results[1][0][k]), k


def test_cosine_schedule_ends_at_zero():
    f = lr_lambda("cosine", 100)
    assert f(0) == 1.0 and abs(f(50) - 0.5) < 1e-9 and f(100) < 1e-12
    assert lr_lambda("constant", 100)(77) == 1.0
