"""RandomResizedCrop + horizontal flip as parameters that replay: issue 19 groundwork.

The crop of view v of sample i under seed s is a pure function of (s, v, i) and the image's size,
drawn with rng.uniforms (counter-based: the same in every DataLoader worker, rank and later
run), by torchvision's RandomResizedCrop.get_params algorithm: up to 10 tries of an area in
`scale` and a log-uniform aspect ratio in `ratio`, else the whole image's central crop at the
nearest allowed ratio. It is stored as FKD stores it, fractions of the image (top, left,
height, width) plus the flip, so a student replays the teacher's crop at any resolution
(crop_boxes). The folder source (streamed.py) draws and replays them in its DataLoader workers.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..rng import uniforms

if TYPE_CHECKING:
    from collections.abc import Sequence

TRIES = 10  # torchvision's
COLUMNS = ("top", "left", "height", "width", "flip")  # fractions of the image, and 0/1


def draw_crops(seed: int, view: int, index: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
               scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """[B, 5] float32: (top, left, height, width) as fractions of each image, then flip (0/1),
    for samples `index` [B] (int64) whose images are heights x widths [B] pixels."""
    index = torch.as_tensor(index, dtype=torch.int64)
    h = torch.as_tensor(heights, dtype=torch.float64)
    w = torch.as_tensor(widths, dtype=torch.float64)
    u = uniforms(seed, view, index, 4 * TRIES + 1).double()  # [B, 41]: 4 per try, 1 for the flip
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    out = torch.zeros(len(index), 4, dtype=torch.float64)
    found = torch.zeros(len(index), dtype=torch.bool)
    for t in range(TRIES):  # as torchvision: the first try that fits, per sample
        target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 4 * t])
        aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, 4 * t + 1])
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h) & ~found
        top = torch.floor(u[:, 4 * t + 2] * (h - ch + 1))  # randint(0, h - ch + 1)
        left = torch.floor(u[:, 4 * t + 3] * (w - cw + 1))
        out[fits] = torch.stack([top, left, ch, cw], 1)[fits]
        found |= fits
    # fallback: the central crop of the whole image, its ratio clamped into `ratio`
    in_ratio = w / h
    cw = torch.where(in_ratio < ratio[0], w, torch.where(in_ratio > ratio[1], torch.round(h * ratio[1]), w))
    ch = torch.where(in_ratio < ratio[0], torch.round(w / ratio[0]), h)
    fallback = torch.stack([torch.div(h - ch, 2, rounding_mode="floor"), torch.div(w - cw, 2, rounding_mode="floor"),
                            ch, cw], 1)
    out[~found] = fallback[~found]
    fractions = out / torch.stack([h, w, h, w], 1)
    flip = (u[:, -1] < 0.5).double()[:, None]
    return torch.cat([fractions, flip], 1).float()


def crop_boxes(fractions: torch.Tensor | np.ndarray, heights: torch.Tensor | np.ndarray | Sequence[int],
               widths: torch.Tensor | np.ndarray | Sequence[int]) -> tuple[np.ndarray, ...]:
    """Stored crop fractions [B, >=4] (top, left, height, width) on images heights x widths [B]
    -> (top, left, h, w) in pixels, each int64 [B]: the same crop at any resolution, at least one
    pixel, inside the image. One numpy pass per batch; np.rint rounds half to even, as round()."""
    f = np.asarray(fractions, dtype=np.float64)[:, :4]
    hh, ww = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    ch = np.clip(np.rint(f[:, 2] * hh).astype(np.int64), 1, hh)
    cw = np.clip(np.rint(f[:, 3] * ww).astype(np.int64), 1, ww)
    top = np.minimum(np.rint(f[:, 0] * hh).astype(np.int64), hh - ch)
    left = np.minimum(np.rint(f[:, 1] * ww).astype(np.int64), ww - cw)
    return top, left, ch, cw


def crop_box(params: torch.Tensor | Sequence[float], height: int, width: int) -> tuple[int, ...]:
    """(top, left, height, width) in pixels of one stored crop [5] on an image of height x width."""
    return tuple(int(v[0]) for v in crop_boxes(torch.as_tensor(params, dtype=torch.float64)[None], [height], [width]))
