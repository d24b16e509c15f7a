"""The teacher-logits cache: one safetensors file, row i = training sample i.

Tensors: `logits` [N, C] (fp32 or fp16) and `labels` [N] int64. Metadata stamps what produced
it: format version, data set and split, sample count, class count, dtype, a fingerprint of the
teacher's weights, a fingerprint of the data, and a checksum of the stored logits. Loading
checks every stamp against what the run uses and refuses a mismatch by name: a stale cache is
never silently used.
"""
import hashlib
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import KDError
from .io import atomic_path

FORMAT_VERSION = "1"
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
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:32]


def save_cache(path, logits, labels, key, dtype="fp32"):
    """Write the cache atomically. logits: [N, C] any float dtype; stored as `dtype`."""
    if dtype not in DTYPES:
        raise KDError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    logits = logits.detach().cpu().to(DTYPES[dtype]).contiguous()
    labels = labels.detach().cpu().long().contiguous()
    if logits.shape != (key.num_samples, key.num_classes) or len(labels) != key.num_samples:
        raise KDError(f"cache tensors {tuple(logits.shape)} do not match {key}")
    meta = {
        "format_version": FORMAT_VERSION,
        **key.as_metadata(),
        "dtype": dtype,
        "logits_sha256": _checksum(logits),
    }
    with atomic_path(path) as tmp:
        save_file({"logits": logits, "labels": labels}, str(tmp), metadata=meta)


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


def load_cache(path, key):
    """Validated (logits [N, C], labels [N]) from `path` for a run described by `key`."""
    meta = read_metadata(path)
    check_metadata(meta, key, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            logits, labels = f.get_tensor("logits"), f.get_tensor("labels")
    except (SafetensorError, OSError, ValueError) as e:
        raise KDError(f"logits cache {path} is truncated or corrupted: {e}") from None
    if tuple(logits.shape) != (key.num_samples, key.num_classes) or str(logits.dtype) != str(
        DTYPES.get(meta.get("dtype"))
    ):
        raise KDError(f"logits cache {path} is corrupted: tensor {tuple(logits.shape)} {logits.dtype}")
    if _checksum(logits) != meta.get("logits_sha256"):
        raise KDError(f"logits cache {path} is corrupted: checksum of the logits does not match")
    return logits, labels
