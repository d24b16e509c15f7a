import math

import torch
import torch.nn.functional as F

from kd_accel.losses import KD_LOSSES, ce_loss, hinton_kd_loss, loss_name, notebook_mse_loss


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


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


S = [[1.0, 2.0, 0.5, -1.0], [0.0, -2.0, 3.0, 1.0]]  # two samples, four classes
TEA = [[0.0, 3.0, 1.0, 0.5], [2.0, 0.0, 1.0, -1.0]]
Y = [1, 2]


def test_t_squared_scaling_and_batchmean():
    """soft = T^2 * mean over samples of KL(p_teacher || p_student), both softened by T: plain
    Python math, no torch formula restated."""
    T = 4.0
    kls = []
    for s_row, t_row in zip(S, TEA):
        p, q = softmax(t_row, T), softmax(s_row, T)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    want = T * T * sum(kls) / len(kls)
    s, t, y = torch.tensor(S), torch.tensor(TEA), torch.tensor(Y)
    assert math.isclose(hinton_kd_loss(s, y, t, T, 1.0)["soft"].item(), want, rel_tol=1e-5)
    # batchmean: duplicating the batch leaves the loss unchanged
    d = hinton_kd_loss(torch.cat([s, s]), torch.cat([y, y]), torch.cat([t, t]), T, 1.0)["soft"]
    assert math.isclose(d.item(), want, rel_tol=1e-5)


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


def test_notebook_mse_is_the_notebooks_loss():
    """(1-a)*CE + a*MSE(student logits, softmax(teacher/T)), the MSE averaged over every
    element (samples x classes), CE over samples: by hand."""
    T, a = 1.5, 0.6
    sq = [(sv - pv) ** 2 for s_row, t_row in zip(S, TEA) for sv, pv in zip(s_row, softmax(t_row, T))]
    mse = sum(sq) / len(sq)
    ce = sum(-math.log(softmax(s_row)[yi]) for s_row, yi in zip(S, Y)) / len(Y)
    s, t, y = torch.tensor(S), torch.tensor(TEA), torch.tensor(Y)
    out = notebook_mse_loss(s, y, t, T, a)
    assert math.isclose(out["soft"].item(), mse, rel_tol=1e-5)
    assert math.isclose(out["hard"].item(), ce, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), (1 - a) * ce + a * mse, rel_tol=1e-5)
    assert math.isclose(ce_loss(s, y)["loss"].item(), ce, rel_tol=1e-5)


def test_old_loss_name_is_an_alias():
    assert loss_name("seed-mse") == "notebook-mse" and KD_LOSSES[loss_name("seed-mse")] is notebook_mse_loss
    assert loss_name("hinton") == "hinton" and loss_name(None) is None
