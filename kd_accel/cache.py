"""The teacher-logits cache: one safetensors file, row i = training sample i.

Tensors: `logits` [N, C] (fp32 or fp16) and `labels` [N] int64. Metadata stamps what produced
it: format version, data set and split, sample count, class count, dtype, a fingerprint of the
teacher's weights, a fingerprint of the data, and a checksum of every stored tensor. Loading
checks every stamp against what the run uses and refuses a mismatch by name: a stale cache is
never silently used.
"""
import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import KDError
from .hashing import tensor_digest
from .io import atomic_path

# 2: the labels are checksummed too (1 covered the logits only); a version-1 cache is refused
# by name, and the run folder's own is recomputed.
FORMAT_VERSION = "2"
TENSORS = ("logits", "labels")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class CacheMismatch(KDError):
    """The cache is valid but was made for another teacher, data set or shape."""


@dataclass(frozen=True)
class CacheKey:
    """What a cache must have been made from to be usable by this run."""

    dataset: str
    split: str
    num_samples: int
    num_classes: int
    teacher_fingerprint: str
    data_fingerprint: str

    def as_metadata(self):
        return {k: str(v) for k, v in self.__dict__.items()}


def _checksum(t):
    """sha256 of the tensor's bytes, hashed in 64 MiB pieces (no second copy of a big cache)."""
    return tensor_digest(t)


def save_cache(path, logits, labels, key, dtype="fp32"):
    """Write the cache atomically. logits: [N, C] any float dtype; stored as `dtype`."""
    if dtype not in DTYPES:
        raise KDError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    logits = logits.detach().cpu().to(DTYPES[dtype]).contiguous()
    labels = labels.detach().cpu().long().contiguous()
    if logits.shape != (key.num_samples, key.num_classes) or len(labels) != key.num_samples:
        raise KDError(f"cache tensors {tuple(logits.shape)} do not match {key}")
    # checked after the cast: fp16 turns logits beyond 65504 into inf
    bad = int((~torch.isfinite(logits)).any(dim=1).sum())
    if bad:
        raise KDError(f"refusing to write {path}: {bad} of {len(logits)} rows of logits are not finite as {dtype}")
    tensors = {"logits": logits, "labels": labels}
    meta = {
        "format_version": FORMAT_VERSION,
        **key.as_metadata(),
        "dtype": dtype,
        **{f"{name}_sha256": _checksum(t) for name, t in tensors.items()},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def check_cache_target(out, teacher=None):
    """Refuse to write a cache at `out` over anything but a kd_accel cache (a checkpoint, any
    other file, a folder), and over the teacher that the cache is computed from."""
    out = Path(out)
    if teacher is not None and out.exists() and os.path.samefile(out, teacher):
        raise KDError(f"--out {out} is the teacher checkpoint itself; refusing to overwrite it with a cache")
    if out.is_dir():
        raise KDError(f"--out {out} is a folder; give the cache file's path")
    if out.exists():
        try:
            meta = read_metadata(out)
        except KDError:
            meta = {}
        if "format_version" not in meta or "teacher_fingerprint" not in meta:
            raise KDError(f"--out {out} exists and is not a kd_accel logits cache; refusing to overwrite it "
                          "(remove it or choose another path)")


def read_metadata(path):
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise KDError(f"logits cache not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise KDError(f"logits cache {path} is truncated or corrupted: {e}") from None


def check_metadata(meta, key, path="cache"):
    """Raise CacheMismatch naming every stamp that differs from `key`."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise CacheMismatch(
            f"{path}: format version {meta.get('format_version')!r}, this kd_accel reads {FORMAT_VERSION!r}"
        )
    labels = {
        "teacher_fingerprint": "teacher weights changed",
        "data_fingerprint": "training data changed",
        "dataset": "data set differs",
        "split": "split differs",
        "num_samples": "sample count differs",
        "num_classes": "class count differs",
    }
    diffs = [
        f"{why} ({name}: cache {meta.get(name)!r}, run {want!r})"
        for name, want in key.as_metadata().items()
        if meta.get(name) != want
        for why in [labels[name]]
    ]
    if diffs:
        raise CacheMismatch(f"stale logits cache {path}: " + "; ".join(diffs))


_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _mmap_tensors(path):
    """Memory-map every tensor of a safetensors file (read-only, zero-copy).

    The format is 8 bytes of header length, a JSON header with each tensor's dtype, shape and
    byte range, then the raw data. Mapping it means N processes on one machine share one copy
    in the page cache, and a batch reads only the rows it gathers."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > size - 8:
            raise ValueError("header larger than the file")
        header = json.loads(f.read(hlen))
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = np.dtype(_NP_DTYPES[spec["dtype"]])
        if 8 + hlen + end > size or end - start != dtype.itemsize * int(np.prod(spec["shape"])):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        arr = np.memmap(path, dtype=dtype, mode="r", offset=8 + hlen + start, shape=tuple(spec["shape"]))
        with warnings.catch_warnings():  # read-only mapping: torch warns it is not writable
            warnings.simplefilter("ignore", UserWarning)
            out[name] = torch.from_numpy(arr)
    return out


def open_cache(path, key=None, verify=True):
    """(logits [N, C], labels [N], metadata) from `path`, checked against `key` (the run that
    wants it) when given; `verify` checks every tensor's stored checksum (reads the file once).

    The logits are memory-mapped, not read: they are paged in as batches gather their rows."""
    meta = read_metadata(path)
    if key is not None:
        check_metadata(meta, key, path)
    try:
        tensors = _mmap_tensors(str(path))
        logits, labels = tensors["logits"], tensors["labels"]
    except (KeyError, OSError, ValueError, struct.error) as e:
        raise KDError(f"logits cache {path} is truncated or corrupted: {e}") from None
    if set(tensors) != set(TENSORS):
        raise KDError(f"logits cache {path} is corrupted: tensors {sorted(tensors)}, expected {list(TENSORS)}")
    want_rows = (key.num_samples, key.num_classes) if key else tuple(logits.shape)
    if tuple(logits.shape) != want_rows or str(logits.dtype) != str(DTYPES.get(meta.get("dtype"))):
        raise KDError(f"logits cache {path} is corrupted: tensor {tuple(logits.shape)} {logits.dtype}")
    for name in TENSORS if verify else ():
        if _checksum(tensors[name]) != meta.get(f"{name}_sha256"):
            raise KDError(f"logits cache {path} is corrupted: checksum of the {name} does not match")
    return logits, labels, meta


def load_cache(path, key, verify=True):
    """Validated (logits [N, C], labels [N]) from `path` for a run described by `key`."""
    logits, labels, _ = open_cache(path, key, verify)
    return logits, labels
