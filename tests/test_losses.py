import math

import torch
import torch.nn.functional as F

from kd_accel.losses import ce_loss, hinton_kd_loss, seed_mse_loss


def test_kl_zero_when_student_equals_teacher():
    t = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    out = hinton_kd_loss(t.clone(), y, t, temperature=3.0, alpha=0.7)
    assert abs(out["soft"].item()) < 1e-6
    assert torch.allclose(out["loss"], 0.3 * F.cross_entropy(t, y))


def test_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    y = torch.tensor([1])
    T, a = 2.0, 0.4
    p = [math.exp(v / T) for v in (0.0, 3.0, 1.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in (1.0, 2.0, 0.5)]
    q = [v / sum(q) for v in q]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = -math.log(math.exp(2.0) / sum(math.exp(v) for v in (1.0, 2.0, 0.5)))
    out = hinton_kd_loss(s, y, t, T, a)
    assert math.isclose(out["soft"].item(), kl * T * T, rel_tol=1e-5)
    assert math.isclose(out["hard"].item(), ce, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), (1 - a) * ce + a * kl * T * T, rel_tol=1e-5)


def test_t_squared_scaling_and_batchmean():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.zeros(4, dtype=torch.long)
    T = 4.0
    raw = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="sum") / 4
    assert torch.allclose(hinton_kd_loss(s, y, t, T, 1.0)["soft"], raw * T**2, rtol=1e-5)
    # batchmean: duplicating the batch leaves the loss unchanged
    d = hinton_kd_loss(torch.cat([s, s]), torch.cat([y, y]), torch.cat([t, t]), T, 1.0)["soft"]
    assert torch.allclose(d, raw * T**2, rtol=1e-5)


def test_finite_and_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 10)
    x = torch.randn(32, 16) * 50
    t = torch.randn(32, 10).to(torch.bfloat16) * 30
    y = torch.randint(0, 10, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = lin(x)
        assert s.dtype == torch.bfloat16
        out = hinton_kd_loss(s, y, t, 8.0, 0.5)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_seed_mse_is_the_notebooks_loss():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    out = seed_mse_loss(s, y, t, 1.5, 0.6)
    want = 0.6 * F.mse_loss(s, F.softmax(t / 1.5, -1)) + 0.4 * F.cross_entropy(s, y)
    assert torch.allclose(out["loss"], want)
    assert torch.allclose(ce_loss(s, y)["loss"], F.cross_entropy(s, y))
