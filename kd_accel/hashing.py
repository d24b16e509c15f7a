"""The one sha256 over tensors behind every fingerprint and checksum (teacher weights, data
splits, cached logits): text headers and raw tensor bytes fed in order, tensors streamed in
64 MiB pieces so a big cache is never copied whole."""
from __future__ import annotations

import hashlib

import torch

CHUNK = 1 << 26  # 64 MiB


def tensor_digest(*parts: str | torch.Tensor) -> str:
    """sha256 over `parts` in order, first 32 hex digits. A str part is hashed as its UTF-8
    bytes; a tensor part as its raw bytes in row-major order (device and layout do not matter,
    dtype does: the bytes are the values as stored)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(part.encode())
            continue
        flat = part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        for i in range(0, len(flat), CHUNK):
            h.update(flat[i : i + CHUNK])
    return h.hexdigest()[:32]
