"""Augmentation from explicit per-sample parameters (groundwork for the K-view cache)."""
import pytest
import torch

from kd_accel.augment import SPECS, apply, augment, draw_params, get_spec, uniforms
from kd_accel.errors import KDError


def test_parameters_are_a_pure_function_of_seed_view_index():
    idx = torch.tensor([0, 5, 17, 59999])
    a = uniforms(3, 1, idx, 5)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, uniforms(3, 1, idx, 5))
    # a sample's numbers do not depend on which other samples share its batch (any rank, any order)
    assert torch.equal(uniforms(3, 1, idx[[3, 1]], 5), a[[3, 1]])
    assert not torch.equal(a, uniforms(4, 1, idx, 5)) and not torch.equal(a, uniforms(3, 2, idx, 5))
    assert ((a >= 0) & (a < 1)).all()


def test_uniforms_look_uniform():
    u = uniforms(0, 0, torch.arange(20000), 2)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    assert abs(torch.corrcoef(u.T)[0, 1].item()) < 0.03  # columns independent
    shift = draw_params(SPECS["shift"], 0, 0, torch.arange(20000))
    counts = torch.bincount((shift[:, 0] + 2).long(), minlength=5)
    assert counts.min() > 3600 and counts.max() < 4400  # -2..2, about 4000 each


def test_shift_moves_pixels_and_fills_zeros():
    img = torch.arange(1, 26, dtype=torch.uint8).reshape(1, 1, 5, 5)
    params = torch.tensor([[1.0, -2.0, 0.0, 0.0, 1.0]])  # dx=+1 (right), dy=-2 (up)
    out = apply(SPECS["shift"], img, params)[0, 0]
    for y in range(5):
        for x in range(5):
            sy, sx = y + 2, x - 1  # view (y, x) = image (y - dy, x - dx)
            want = img[0, 0, sy, sx] if 0 <= sy < 5 and 0 <= sx < 5 else 0
            assert out[y, x] == want, (y, x)


def test_crop_flip_mirrors_where_asked():
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    params = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    out = apply(SPECS["crop-flip"], img, params)
    assert torch.equal(out[0], img[0].flip(-1)) and torch.equal(out[1], img[1])


def test_affine_identity_is_exact_and_shapes_hold():
    img = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    ident = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(4, 1)
    assert torch.equal(apply(SPECS["affine"], img, ident), img)
    views, params = augment(SPECS["affine"], img, 0, 0, torch.arange(4))
    assert views.shape == img.shape and views.dtype == torch.uint8 and params.shape == (4, 5)
    assert (params[:, 3].abs() <= 10).all() and ((params[:, 4] - 1).abs() <= 0.1).all()


def test_unknown_augmentation_is_one_line():
    with pytest.raises(KDError, match="unknown augmentation 'blur'"):
        get_spec("blur")
