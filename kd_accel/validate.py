"""What kd_accel takes from a file is checked where it enters, by one rule each:

- check_finite: every floating-point tensor read from a file (a model's parameters *and*
  buffers, optimizer state, cached logits and crops) is finite, or the file is refused in one
  line naming it and the tensor: `W.pth: tensor bn1.running_var is not finite (1 inf); refusing
  to use it`. A model that was never finite is never evaluated, cached, taught from or saved.
- file_kind: what a file is, in words, so that a file of another kind is refused as what it is
  (a PyTorch file given where a kd_accel model belongs, a logits cache given as weights), not as
  "truncated".

Every function that reads tensors from a file registers here (`reads_tensors`), and the tests
walk the registry (tests/test_trust_models.py): for each reader, a file in its format with a
NaN parameter and an inf buffer is refused by name. A function of the package that calls a raw
reader (RAW_READS: load_file, torch.load, safe_open, ...) must be a registered reader, a raw
helper behind one (BEHIND), or say why it lets no unchecked tensor in (EXEMPT); the tests scan
the package's source for such calls, so a new reader cannot be left out by accident.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any, TypeVar

    Reader = TypeVar("Reader", bound=Callable[..., Any])

# what the tests' scan of the package counts as reading tensors from a file (regular expressions
# over each function's source); the raw helpers of BEHIND are added to it
RAW_READS = (r"\bload_file\(", r"\btorch\.load\(", r"\bsafe_open\(", r"\bnp\.memmap\(", r"\.load_state\(",
             r"\.get_tensor\(")

READERS = {}  # "module.qualname" -> formats the reader takes (names the tests write files in)

# raw helpers: they read, and the registered reader named checks what they return
BEHIND = {
    "kd_accel.models.zoo._read_safetensors": "kd_accel.models.zoo.read_weights",
    "kd_accel.models.zoo._read_torch": "kd_accel.models.zoo.read_weights",
    "kd_accel.cache._mmap_tensors": "kd_accel.cache.open_cache",
    "kd_accel.cache._mmap_or_refuse": "kd_accel.cache.open_cache",
}

# functions that read a file but let no unchecked floating-point tensor in, and why
EXEMPT = {
    "kd_accel.cache.read_metadata": "metadata only (strings)",
    "kd_accel.cache.stored_identity": "an image folder's int64 file hashes and paths, only to name what changed",
    "kd_accel.cache.CacheColumn.__call__": "maps again a cache open_cache validated, keyed by its checksum",
    "kd_accel.models.preprocessing._recorded": "metadata only: the preprocessing a model file records",
    "kd_accel.outputs._metadata": "metadata only, to name a file's kind",
    "kd_accel.data.folder.load_listing": "an image folder's int64 file hashes and class names",
    "kd_accel.data.content.Ledger.array": "an image folder's int64 file digests (what a run folder read)",
}


def reads_tensors(*formats: str) -> Callable[[Reader], Reader]:
    """Register a function that brings tensors in from a file of the given formats: it must
    call check_finite on every one (tests/test_trust_models.py writes each format and checks)."""
    def register(fn: Reader) -> Reader:
        READERS[f"{fn.__module__}.{fn.__qualname__}"] = formats
        return fn
    return register


_CHUNK = 1 << 24  # values checked at a time: a memory-mapped cache is never copied whole


def _counts(t):
    """(NaN count, inf count) of a floating-point tensor; (0, 0) for other dtypes."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0, 0
    flat = t.detach().reshape(-1)
    nan = inf = 0
    for i in range(0, flat.numel(), _CHUNK):
        part = flat[i : i + _CHUNK]
        try:
            ok = bool(torch.isfinite(part).all())
        except (RuntimeError, NotImplementedError):  # a dtype isfinite does not take (float8): as float32
            part = part.float()
            ok = bool(torch.isfinite(part).all())
        if not ok:
            nan += int(torch.isnan(part).sum())
            inf += int(torch.isinf(part).sum())
    return nan, inf


def named_tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every tensor in nested dicts, lists and tuples (an optimizer's
    state dict: state.0.exp_avg)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite(tensors: object) -> str | None:
    """'tensor NAME is not finite (2 NaN, 1 inf)' for the first floating-point tensor of
    `tensors` ({name: tensor}, or nested containers of tensors) holding NaN or inf; None if all
    are finite."""
    for name, t in named_tensors(tensors):
        nan, inf = _counts(t)
        if nan or inf:
            what = ", ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "inf")) if n)
            return f"tensor {name} is not finite ({what})"
    return None


def check_finite(tensors: object, path: Path | str) -> None:
    """Refuse, in one line naming `path` and the tensor, a file whose tensors (a {name: tensor}
    state dict, or nested containers of tensors) hold a NaN or an inf."""
    problem = nonfinite(tensors)
    if problem:
        raise KDError(f"{path}: {problem}; refusing to use it")


def file_kind(path: Path | str) -> str | None:
    """What the file at `path` is, in words, from its first bytes and (safetensors) metadata:
    'a kd_accel teacher model file', 'a kd_accel teacher-logits cache', 'a safetensors file',
    'a PyTorch (torch.save) file', 'a pickle', 'an empty file', 'a folder'; None if unknown."""
    import json
    import os
    import struct

    if os.path.isdir(path):
        return "a folder"
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            if not head:
                return "an empty file"
            if head.startswith(b"PK\x03\x04"):  # torch.save's zip
                return "a PyTorch (torch.save) file"
            if head[8:9] == b"{":  # safetensors: the header's length (8 bytes), then its JSON
                (n,) = struct.unpack("<Q", head[:8])
                if n <= min(os.path.getsize(path) - 8, 100_000_000):
                    meta = json.loads(b"{" + f.read(n - 1)).get("__metadata__") or {}
                    if "format_version" in meta and "views" in meta:
                        return "a kd_accel teacher-logits cache"
                    if "arch" in meta:
                        return f"a kd_accel {meta.get('role', meta['arch'])} model file"
                return "a safetensors file"
            if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # a pickle's PROTO opcode: legacy torch.save
                return "a pickle (a legacy torch.save file?)"
    except (OSError, ValueError, AttributeError, struct.error):
        return None
    return None
