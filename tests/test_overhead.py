"""kd_accel/overhead.py: the removed per-step and per-phase costs change no number."""
import gc
import importlib.util

import torch

from kd_accel import overhead
from kd_accel.config import from_flags
from kd_accel.models import Student
from kd_accel.pipeline import columns
from kd_accel.training import TrainSpec, fit, make_objective
from kd_accel.data import TensorData

from conftest import tiny_split


def test_probe_is_asked_once_and_weights_are_unchanged(accelerator, monkeypatch):
    import accelerate.optimizer as accelerated

    train = tiny_split(60)
    cfg = from_flags(epochs=1, batch_size=10, schedule="constant")

    def trained():
        torch.manual_seed(0)
        model, _ = fit(accelerator, Student(), TensorData(columns(train)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("ce"), "s")
        return model.state_dict()

    probes = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (probes.append(name), real(name, *a))[1])
    monkeypatch.setattr(overhead, "_applied", False)
    # Accelerate's own, uncached probe (an earlier test's make_accelerator may have cached it); restored after
    original = getattr(accelerated.is_lomo_available, "__wrapped__", accelerated.is_lomo_available)
    monkeypatch.setattr(accelerated, "is_lomo_available", original)
    before = trained()
    per_step = probes.count("lomo_optim")
    assert per_step >= 12  # 6 optimizer steps, the probe asked twice at each (Accelerate's own behaviour)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # keep this test process's gc as it was
    overhead.remove_overhead()
    probes.clear()
    after = trained()
    assert probes.count("lomo_optim") <= 2  # not per step: once by the cache (and once outside the step)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the same weights, bit for bit
