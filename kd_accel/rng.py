"""A counter-based generator: uniform numbers that are a pure function of (seed, view, index,
column), the same on every device, rank, DataLoader worker and later run, with no state to keep
or send. Every augmentation parameter kd_accel draws (augment.py's in-memory views, the image
folders' crops in data/crops.py, the mixes in data/mixing.py) comes from here, so any process
rebuilds exactly the view the teacher saw. A module of its own: the data layer and augment.py
both draw from it, and neither imports the other for it.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _to_signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64's constants, as signed int64 (torch has no uint64 arithmetic; int64 wraps the same)
_GOLDEN = _to_signed(0x9E3779B97F4A7C15)
_MIX1 = _to_signed(0xBF58476D1CE4E5B9)
_MIX2 = _to_signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def hashes(seed: int, view: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """[len(index), count] int64: 64 random bits per (seed, view, index, column), the same on
    every device and rank (what uniforms scales; a mix's pairing sorts the samples by them, where
    float32 uniforms would tie). index: int64 tensor of sample indices."""
    index = torch.as_tensor(index, dtype=torch.int64)
    key = _splitmix64(torch.tensor(_to_signed((int(seed) * 0x100000001B3 + int(view)) & _MASK64), dtype=torch.int64))
    cols = torch.arange(count, dtype=torch.int64, device=index.device)
    return _splitmix64(_splitmix64(key.to(index.device) ^ index)[:, None] + cols[None, :] * _GOLDEN)


def doubles(seed: int, view: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """[len(index), count] float64 in [0, 1) (never 1: what a logarithm of 1 - u needs), from the
    top 53 bits of hashes."""
    return _shr(hashes(seed, view, index, count), 11).double().mul_(2.0 ** -53)


def uniforms(seed: int, view: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """[len(index), count] floats in [0, 1): a pure function of (seed, view, index, column),
    the same on every device and rank. index: int64 tensor of sample indices."""
    return doubles(seed, view, index, count).float()
