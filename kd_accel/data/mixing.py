"""Mixup and cutmix as parameters that replay (issue 27: Beyer et al. 2022's function matching
from a cache).

The mix of view v of sample i under seed s is a pure function of (s, v, i) and the number of
samples N, drawn with rng (counter-based: the same in every DataLoader worker, rank and later
run), so a K-view cache stores it beside the view's crop parameters and a student replays the
very mixed image the teacher saw:

- the partner: view v pairs the samples at random (a perfect matching: the samples sorted by a
  counter hash, neighbours paired; with N odd the last one mixes with the first, one way). The
  partner is seen as its own view v (its own crop of the same view, as SRe2L/FKD keep each
  sample's crop), so i and its partner j mix with each other, each with its own weight; an
  image folder's epoch keeps each pair in one batch (loading.pair_order), so its workers decode
  every image once.
- lambda ~ Beta(alpha, alpha): alpha = 1 is the uniform itself (Beyer et al.'s choice); other
  alphas the ratio of two Gamma variates (Marsaglia and Tsang, a fixed number of tries).
- mixup blends: mixed = w * own + (1 - w) * partner with w = lambda. cutmix pastes: a box of
  area 1 - lambda at a uniform centre, clipped to the image (timm's rand_bbox), takes the
  partner's pixels; w = 1. One formula holds both: where(in box, partner, w * own + (1 - w) *
  partner), so nothing downstream asks which kind it is. A sample's own label weighs the share
  of its pixels, w * (1 - box area / image area) (cutmix: the kept area at the resolution the
  image is mixed at, as timm corrects lambda).

Stored as integers 0..65535 (a float32 or uint16 column holds them exactly; the same values in
both kinds of cache): MIX_COLUMNS, the partner's index in two 16-bit halves, w and the box
(top, left, bottom, right) as fractions x 65535, which become pixels at any resolution
(box_pixels), as the crops do.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import torch

from ..rng import doubles, hashes

KINDS = ("none", "mixup", "cutmix")
MIX_COLUMNS = ("partner_hi", "partner_lo", "weight", "top", "left", "bottom", "right")
LEVELS = 65535  # w and the box as fractions x 65535
TRIES = 8  # Marsaglia-Tsang tries per Gamma variate: each accepts with p > 0.95, all 8 fail with p < 1e-10
_GAMMA_COLS = 3 * TRIES + 1  # a normal (2 uniforms) and an acceptance uniform per try, 1 for alpha < 1


@dataclass(frozen=True)
class MixSpec:
    """A mix: its kind (none, mixup, cutmix) and the alpha of lambda's Beta(alpha, alpha)."""

    name: str = "none"
    alpha: float = 1.0

    def __bool__(self) -> bool:
        return self.name != "none"

    def describe(self) -> str:
        """The canonical string stamped on caches ("mixup(alpha=1)"): another kind or alpha is
        another cache."""
        return "none" if not self else f"{self.name}(alpha={self.alpha:g})"


NO_MIX = MixSpec()


def _salted(seed: int, what: str) -> int:
    """A 63-bit seed for one of a mix's draws, unrelated to the crops drawn from the same seed."""
    digest = hashlib.sha256(f"kd_accel/mix/{what}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@functools.lru_cache(maxsize=4)
def pairing(seed: int, view: int, n: int) -> torch.Tensor:
    """[n] int64: each sample's partner in view `view` (a perfect matching, from seed and view
    alone; n odd: the odd one out takes the first of the order, one way). Made once per view in
    each process (a sort of n hashes); callers index it, never write to it."""
    if n < 2:
        return torch.zeros(n, dtype=torch.int64)
    keys = hashes(_salted(seed, "pair"), view, torch.arange(n), 1)[:, 0]
    order = torch.sort(keys, stable=True).indices  # a random order of the samples
    partner = torch.empty(n, dtype=torch.int64)
    m = n - n % 2
    partner[order[0:m:2]], partner[order[1:m:2]] = order[1:m:2], order[0:m:2]
    if n % 2:
        partner[order[-1]] = order[0]
    return partner


def _log_gamma(alpha: float, u: torch.Tensor) -> torch.Tensor:
    """log of a Gamma(alpha, 1) variate per row of uniforms u [B, _GAMMA_COLS] (float64):
    Marsaglia and Tsang's method, the first accepted of TRIES (their mode d if none is); for
    alpha < 1, Gamma(alpha + 1) * U^(1 / alpha), kept in logs (small alphas underflow)."""
    a = alpha + 1 if alpha < 1 else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.full((len(u),), math.log(d), dtype=torch.float64)
    found = torch.zeros(len(u), dtype=torch.bool)
    for t in range(TRIES):
        z = torch.sqrt(-2 * torch.log1p(-u[:, 3 * t])) * torch.cos(2 * math.pi * u[:, 3 * t + 1])  # Box-Muller
        v = (1 + c * z) ** 3
        safe = torch.where(v > 0, v, torch.ones_like(v))
        accept = (v > 0) & (torch.log1p(-u[:, 3 * t + 2]) < 0.5 * z * z + d - d * safe + d * torch.log(safe)) & ~found
        out = torch.where(accept, math.log(d) + torch.log(safe), out)
        found |= accept
    if alpha < 1:
        out = out + torch.log1p(-u[:, -1]) / alpha
    return out


def draw_lambda(alpha: float, u: torch.Tensor) -> torch.Tensor:
    """[B] float64 lambda ~ Beta(alpha, alpha) from uniforms u [B, 1 + 2 * _GAMMA_COLS]: the
    first column itself when alpha = 1, else X / (X + Y) of two Gamma(alpha) variates."""
    if alpha == 1:
        return u[:, 0]
    g = 1 + _GAMMA_COLS
    return torch.sigmoid(_log_gamma(alpha, u[:, 1:g]) - _log_gamma(alpha, u[:, g:]))


def _q(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * LEVELS).to(torch.int64)


def draw_mix(spec: MixSpec, seed: int, view: int, index: torch.Tensor, n: int) -> torch.Tensor:
    """[B, 7] int64 (MIX_COLUMNS) of view `view` of samples `index` (int64 [B], of n samples)."""
    index = torch.as_tensor(index, dtype=torch.int64).cpu()
    partner = pairing(int(seed), int(view), int(n))[index]
    u = doubles(_salted(seed, "mix"), view, index, 3 + 2 * _GAMMA_COLS)  # lambda's, then the box's centre
    lam = draw_lambda(spec.alpha, torch.cat([u[:, :1], u[:, 3:]], 1))
    out = torch.zeros(len(index), len(MIX_COLUMNS), dtype=torch.int64)
    out[:, 0], out[:, 1] = partner >> 16, partner & 0xFFFF
    if spec.name == "mixup":
        out[:, 2] = _q(lam)
    else:  # cutmix: the box's side sqrt(1 - lambda) of the image's, about a uniform centre
        half = torch.sqrt(1 - lam) / 2
        cy, cx = u[:, 1], u[:, 2]
        out[:, 2] = LEVELS
        out[:, 3:] = torch.stack([_q(cy - half), _q(cx - half), _q(cy + half), _q(cx + half)], 1)
    return out


def partners(mix: torch.Tensor) -> torch.Tensor:
    """[B] int64 partner indices of stored mixes [B, 7] (any integer or float dtype)."""
    m = mix[:, :2].to(torch.int64)
    return m[:, 0] * 65536 + m[:, 1]


def box_pixels(mix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 4] int64 (y0, y1, x0, x1) of the stored boxes on a height x width image: integer
    arithmetic, so every device rounds alike (an empty box for mixup)."""
    top, left, bottom, right = mix[:, 3:].to(torch.int64).unbind(1)  # no host tensor: no copy to the device

    def at(q, side):
        return (q * side + LEVELS // 2) // LEVELS

    return torch.stack([at(top, height), at(bottom, height), at(left, width), at(right, width)], 1)


def weights(mix: torch.Tensor) -> torch.Tensor:
    """[B] float32 w of the stored mixes: the own image's weight outside the box."""
    return mix[:, 2].to(torch.float32) / LEVELS  # exact integers, one IEEE division: alike everywhere


def label_share(mix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B] float32: the share of each mixed image's pixels that are its own sample's, the weight
    of its own label (the partner's is 1 minus it): w * (1 - box area / image area)."""
    y0, y1, x0, x1 = box_pixels(mix, height, width).unbind(1)
    area = ((y1 - y0) * (x1 - x0)).to(torch.float32)
    return weights(mix) * (1 - area / (height * width))


def mix_pixels(own: torch.Tensor, partner: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """own, partner float [B, C, H, W] (each sample's view and its partner's) and their mixes
    [B, 7] -> the mixed images: where(in box, partner, w * own + (1 - w) * partner). w = 1 (cutmix)
    leaves the own pixels exact outside the box; an empty box (mixup) blends everywhere."""
    h, w = own.shape[-2:]
    y0, y1, x0, x1 = box_pixels(mix, h, w).to(own.device).unbind(1)
    wt = weights(mix).to(own.device, own.dtype)[:, None, None, None]
    out = own * wt + partner * (1 - wt)
    rows = torch.arange(h, device=own.device)
    cols = torch.arange(w, device=own.device)
    inside = (((rows >= y0[:, None]) & (rows < y1[:, None]))[:, None, :, None]
              & ((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, None, :])  # [B, 1, H, W]
    return torch.where(inside, partner, out)
