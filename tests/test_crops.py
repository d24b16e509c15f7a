"""kd_accel/data/crops.py (issue 19 groundwork): RandomResizedCrop + flip parameters that replay."""
import pytest
import torch

from kd_accel.data.crops import crop_box, draw_crops


def test_a_crop_is_a_pure_function_of_seed_view_and_index():
    index = torch.arange(100)
    h, w = torch.full((100,), 224), torch.full((100,), 300)
    all_of_them = draw_crops(7, 2, index, h, w)
    alone = draw_crops(7, 2, torch.tensor([57]), torch.tensor([224]), torch.tensor([300]))
    assert torch.equal(all_of_them[57:58], alone)  # any batch, any worker, any rank: the same crop
    assert not torch.equal(all_of_them, draw_crops(7, 3, index, h, w))  # another view
    assert not torch.equal(all_of_them, draw_crops(8, 2, index, h, w))  # another seed
    assert all_of_them.dtype == torch.float32 and all_of_them.shape == (100, 5)


def test_crops_keep_torchvisions_constraints_and_distribution():
    from torchvision.transforms import RandomResizedCrop

    n, height, width = 20000, 180, 320
    p = draw_crops(0, 0, torch.arange(n), torch.full((n,), height), torch.full((n,), width)).double()
    top, left, ch, cw, flip = p.unbind(1)
    assert bool(((p[:, :4] >= 0) & (p[:, :4] <= 1)).all()) and bool((top + ch <= 1 + 1e-6).all())
    assert bool((left + cw <= 1 + 1e-6).all()) and set(flip.tolist()) == {0.0, 1.0}
    area = ch * cw
    aspect = (cw * width) / (ch * height)
    assert bool((area <= 1 + 1e-6).all()) and bool((aspect > 3 / 4 * 0.97).all() & (aspect < 4 / 3 * 1.03).all())
    torch.manual_seed(0)
    tv = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, height, width), (0.08, 1.0), (3 / 4, 4 / 3))
                       for _ in range(n)], dtype=torch.float64)
    tv_area = tv[:, 2] * tv[:, 3] / (height * width)
    assert abs(float(area.mean() - tv_area.mean())) < 0.01, (area.mean(), tv_area.mean())
    assert abs(float(flip.mean()) - 0.5) < 0.02


def test_the_fallback_is_torchvisions_central_crop():
    # no area in scale fits (more than the image): the central crop at the nearest allowed ratio
    wide = draw_crops(0, 0, torch.arange(3), torch.full((3,), 100), torch.full((3,), 400), scale=(2.0, 3.0))
    assert [crop_box(p, 100, 400) for p in wide] == [(0, 133, 100, 133)] * 3  # torchvision: w = round(100 * 4/3)
    tall = draw_crops(0, 0, torch.arange(1), torch.tensor([400]), torch.tensor([100]), scale=(2.0, 3.0))
    assert crop_box(tall[0], 400, 100) == (133, 0, 133, 100)
    square = draw_crops(0, 0, torch.arange(1), torch.tensor([50]), torch.tensor([50]), scale=(2.0, 3.0))
    assert crop_box(square[0], 50, 50) == (0, 0, 50, 50)


@pytest.mark.parametrize("size", [(200, 300), (100, 150), (400, 600)])
def test_a_crop_replays_at_any_resolution(size):
    p = draw_crops(3, 1, torch.arange(50), torch.full((50,), 200), torch.full((50,), 300))
    for row in p:
        top, left, ch, cw = crop_box(row, *size)
        ref = crop_box(row, 200, 300)
        scale = size[0] / 200
        assert 0 <= top and top + ch <= size[0] and 0 <= left and left + cw <= size[1]
        assert abs(ch - ref[2] * scale) <= 1 and abs(cw - ref[3] * scale) <= 1 and abs(top - ref[0] * scale) <= 1
