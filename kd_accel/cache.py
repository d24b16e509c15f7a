"""The teacher-logits cache: one safetensors file holding K views of every training sample.

A view is one pass over the training set as the teacher saw it: view v of sample i is the image
augmented with the parameters kd_accel.augment draws for (augment_seed, v, i) (with no
augmentation, view 0 is the plain image). Tensors, row i = training sample i:

- `labels` [N] int64.
- full storage: `logits` [K, N, C], fp32 or fp16.
- top-k storage (FKD's compression): `topk_logp` [K, N, k], fp32 or fp16, the teacher's
  log-probabilities at T=1, the k largest of each row sorted descending, and `topk_index`
  [K, N, k] int16, their classes. The other C - k entries are rebuilt by expand_topk, which
  spreads the remaining mass evenly over them. A view of a sample costs 4k bytes in fp16 (6k in
  fp32) against 2C (4C) for the full logits: C / 2k times less, 100x for ImageNet at k = 5.
- `params` [K, N, P] float32, optional: the augmentation parameters each view was made with
  (P = 5 for kd_accel.augment: dx, dy, flip, angle, scale), so a student rebuilds exactly the
  image whose logits it is taught.

Metadata stamps what produced it: format version, every CacheKey field (data set and split,
sample count, class count, fingerprints of the teacher's weights and of the data, augmentation
spec and seed), the view count `views`, the `dtype`, the `storage` ("full" or "top<k>") and a
checksum of every stored tensor. Loading checks every stamp against what the run uses and
refuses a mismatch by name: a stale cache is never silently used. A cache with more views than a
run needs serves it (the run reads the first ones); fewer is refused.

Resumable precompute: each finished view is first written as its own part file in a hidden
folder beside the cache (parts_dir), stamped with the key, view index and dtype and checksummed,
so a killed K-view precompute restarts at the first missing view; the parts are deleted once the
whole cache is written (remove_parts).
"""
import json
import math
import operator
import os
import shutil
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
from .validate import check_finite, file_kind, reads_tensors

# 3: K views per sample (logits [K, N, C]), optional top-k storage and augmentation parameters,
# the augmentation stamped in the key; 2 checksummed the labels too (1 covered the logits only).
# An older cache is refused by name, and the run folder's own is recomputed.
FORMAT_VERSION = "3"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MAX_TOPK_CLASSES = 1 << 31  # topk_index is the smallest type that holds the classes: uint8, int16 or int32
PARAM_DTYPES = (torch.float32, torch.uint16)  # params: float32 (in-memory augmentations), uint16 crop fractions (folders)
# the remaining mass outside the top k when it rounds to <= 0: the smallest normal float32, so
# its log (-87.3) stays finite and the other classes keep a (negligible) probability
_TINY = torch.finfo(torch.float32).tiny
_PART_ROWS = 1 << 16  # rows compressed at a time: log_softmax makes a float32 copy of its input


class CacheMismatch(KDError):
    """The cache is valid but was made for another teacher, data set, shape or augmentation."""


@dataclass(frozen=True)
class CacheKey:
    """What a cache must have been made from to be usable by this run."""

    dataset: str
    split: str
    num_samples: int
    num_classes: int
    teacher_fingerprint: str
    data_fingerprint: str
    augment: str = "none"  # canonical spec, e.g. "shift(pad=2)"; compared exactly
    augment_seed: int = 0
    # the teacher's input: size, interpolation, mean/std (models/preprocessing.describe)
    teacher_input: str = None

    def as_metadata(self):
        return {k: str(v) for k, v in self.__dict__.items()}


def _checksum(t):
    """sha256 of the tensor's bytes, hashed in 64 MiB pieces (no second copy of a big cache)."""
    return tensor_digest(t)


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise KDError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_topk(k, num_classes):
    """The top-k size as an int: 1 <= k < C (k = C would store as much as the full logits)."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise KDError(f"top-k must be an integer, got {k!r}") from None
    if not 1 <= k < num_classes:
        raise KDError(f"top-k must be between 1 and {num_classes - 1} (the class count minus one), got {k}")
    return k


def index_dtype(num_classes):
    """The smallest integer type that holds class indices 0..num_classes-1: uint8 up to 256
    classes, int16 up to 32768 (ImageNet's 1000), else int32."""
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 1 << 15 else torch.int32


def _check_finite(t, path, what, dtype):
    """Refuse rows (last dim) of `t` holding NaN or inf; checked after the cast to the stored dtype."""
    bad = int((~torch.isfinite(t)).any(dim=-1).sum())
    if bad:
        rows = t.shape[:-1].numel()
        raise KDError(f"refusing to write {path}: {bad} of {rows} rows of {what} are not finite as {dtype}")


def _as_params(params, views, n, path, one_view):
    """params [K, N, P] (or [N, P] beside one view given as [N, C]) -> contiguous float32 [K, N, P]."""
    params = params.detach().cpu().float()
    if one_view and params.dim() == 2:
        params = params[None]
    if params.dim() != 3 or tuple(params.shape[:2]) != (views, n):
        raise KDError(f"augmentation params {tuple(params.shape)} do not match the logits: "
                      f"expected [{views}, {n}, P] (views, samples, parameters)")
    _check_finite(params, path, "augmentation params", "float32")
    return params.contiguous()


# --- top-k compression (FKD's marginal smoothing) -------------------------------------------------

def compress_topk(logits, k):
    """logits [..., C] -> (logp [..., k] float32, index [..., k] int64): the k largest
    log-probabilities at T=1 (log_softmax), sorted descending, and their classes."""
    k = check_topk(k, logits.shape[-1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.topk(logp, k, dim=-1, sorted=True)


def expand_topk(logp, index, num_classes):
    """(logp [..., k], index [..., k]) -> [..., C] float32 log-probabilities: the top k keep
    theirs; the remaining mass 1 - sum(exp(logp)) is spread evenly over the other C - k classes.

    The result serves as teacher logits (softmax(out / T) in the KD loss); exp(out) sums to 1."""
    logp, index = logp.float(), index.long()
    k = logp.shape[-1]
    shape = (*logp.shape[:-1], num_classes)
    if k < num_classes:
        # log(1 - sum p) as log(-expm1(logsumexp(logp))): exact when the top k hold nearly all of
        # it, where 1 - sum would cancel; clamped when they hold all of it (or a hair more after
        # fp16 rounding), so no log(0) = -inf and no NaN
        rest = (-torch.expm1(torch.logsumexp(logp, dim=-1, keepdim=True))).clamp_min(_TINY)
        out = (rest.log() - math.log(num_classes - k)).expand(shape).clone()
    else:
        out = logp.new_zeros(shape)
    out.scatter_(-1, index, logp)
    return torch.log_softmax(out, dim=-1)  # renormalise: a no-op unless the mass was clamped


def topk_logits(cols, num_classes):
    """[B, C] float32 log-probabilities from a top-k cache's columns (SoftTargets.columns, or a
    batch of their rows): "teacher_topk_logp" and "teacher_topk_index" [B, k], expanded."""
    return expand_topk(cols["teacher_topk_logp"], cols["teacher_topk_index"], num_classes)


def _compress_views(logits, k):
    """compress_topk over [K, N, C] in pieces of _PART_ROWS rows (a whole ImageNet-sized cache
    as float32 log-probabilities would be tens of GB): ([K, N, k] float32, [K, N, k] int16)."""
    flat = logits.reshape(-1, logits.shape[-1])
    logp = torch.empty(len(flat), k)
    index = torch.empty(len(flat), k, dtype=index_dtype(logits.shape[-1]))
    for i in range(0, len(flat), _PART_ROWS):
        lp, ix = compress_topk(flat[i : i + _PART_ROWS], k)
        logp[i : i + _PART_ROWS], index[i : i + _PART_ROWS] = lp, ix
    return logp.reshape(*logits.shape[:-1], k), index.reshape(*logits.shape[:-1], k)


# --- writing --------------------------------------------------------------------------------------

def save_cache(path, logits, labels, key, dtype="fp32", params=None, topk=None):
    """Write the cache atomically. logits: [N, C] (one view) or [K, N, C], any float dtype;
    labels [N]; params: None or [K, N, P] (the augmentation parameters of each view); topk: None
    (store the full logits as `dtype`) or k (store the top-k log-probabilities as `dtype`)."""
    _check_dtype(dtype)
    logits = logits.detach().cpu()
    one_view = logits.dim() == 2
    if one_view:
        logits = logits[None]  # [1, N, C]
    labels = labels.detach().cpu().long().contiguous()
    n, c = key.num_samples, key.num_classes
    if logits.dim() != 3 or len(logits) < 1 or tuple(logits.shape[1:]) != (n, c) or labels.shape != (n,):
        raise KDError(f"cache tensors: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} do not match "
                      f"{key} (expected [K, {n}, {c}] and [{n}])")
    views = len(logits)
    tensors = {"labels": labels}
    if topk is None:
        stored = logits.to(DTYPES[dtype]).contiguous()
        _check_finite(stored, path, "logits", dtype)  # after the cast: fp16 turns logits beyond 65504 into inf
        tensors["logits"], storage = stored, "full"
    else:
        k = check_topk(topk, c)
        _check_finite(logits, path, "logits", "given")  # NaN or inf has no log-probability
        logp, index = _compress_views(logits, k)
        logp = logp.to(DTYPES[dtype])
        _check_finite(logp, path, "top-k log-probabilities", dtype)  # below -65504 is -inf in fp16
        tensors["topk_logp"], tensors["topk_index"], storage = logp, index, f"top{k}"
    if params is not None:
        tensors["params"] = _as_params(params, views, n, path, one_view)
    meta = {
        "format_version": FORMAT_VERSION,
        **key.as_metadata(),
        "views": str(views),
        "dtype": dtype,
        "storage": storage,
        **{f"{name}_sha256": _checksum(t) for name, t in tensors.items()},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# --- reading --------------------------------------------------------------------------------------

def read_metadata(path):
    if Path(path).is_dir():  # safetensors would say only "No such device (os error 19)"
        raise KDError(f"logits cache {path} is a folder, not a cache file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise KDError(f"logits cache not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        kind = file_kind(path)
        if kind and kind.startswith(("a PyTorch", "a pickle", "an empty")):  # not a cache at all
            raise KDError(f"logits cache {path} is {kind}, not a teacher-logits cache") from None
        raise KDError(f"logits cache {path} is truncated or corrupted: {e}") from None


def _check_version(meta, path):
    if "arch" in meta and "format_version" not in meta:  # what models.save_model stamps
        raise CacheMismatch(f"{path} holds a {meta.get('role', meta['arch'])!r} model, not a teacher-logits cache")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CacheMismatch(
            f"{path}: format version {meta.get('format_version')!r}, this kd_accel reads {FORMAT_VERSION!r}"
        )


def check_cache_file(path, flag):
    """An existing file given as a cache (`flag`, e.g. --logits) is a kd_accel cache of this
    format, checked before any work (a teacher trained first would be wasted); a missing one is
    where the run writes its cache."""
    if Path(path).is_dir():
        raise KDError(f"{flag} {path} is a folder; give the logits cache file (.safetensors)")
    if Path(path).exists():
        try:
            _check_version(read_metadata(path), path)
        except KDError as e:
            raise KDError(f"{flag}: {e}") from None


def check_metadata(meta, key, path="cache"):
    """Raise CacheMismatch naming every stamp that differs from `key`."""
    _check_version(meta, path)
    labels = {
        "teacher_fingerprint": "teacher weights changed",
        "data_fingerprint": "training data changed",
        "dataset": "data set differs",
        "split": "split differs",
        "num_samples": "sample count differs",
        "num_classes": "class count differs",
        "augment": "augmentation differs",
        "augment_seed": "augmentation seed differs",
        "teacher_input": "teacher preprocessing differs",
    }
    diffs = [
        f"{why} ({name}: cache {meta.get(name)!r}, run {want!r})"
        for name, want in key.as_metadata().items()
        if meta.get(name) != want
        for why in [labels[name]]
    ]
    if diffs:
        raise CacheMismatch(f"stale logits cache {path}: " + "; ".join(diffs))


_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "U16": np.uint16, "U8": np.uint8}
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
              torch.uint16: "U16", torch.uint8: "U8"}


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


def _mmap_or_refuse(path, what="logits cache"):
    try:
        return _mmap_tensors(str(path))
    except (KeyError, TypeError, OSError, ValueError, struct.error) as e:
        raise KDError(f"{what} {path} is truncated or corrupted: {e!r}") from None


def _check_tensors(tensors, meta, layout, path, what="logits cache"):
    """Every tensor present with the shape and dtype `layout` ({name: (shape, dtype)}) says,
    nothing else; then (when meta is given) its bytes against the stored checksum."""
    if set(tensors) != set(layout):
        raise KDError(f"{what} {path} is corrupted: tensors {sorted(tensors)}, expected {sorted(layout)}")
    for name, (shape, dtype) in layout.items():
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype not in (dtype if isinstance(dtype, tuple) else (dtype,)):
            raise KDError(f"{what} {path} is corrupted: {name} {tuple(t.shape)} {t.dtype}, expected {shape} {dtype}")
    for name in layout if meta is not None else ():
        if _checksum(tensors[name]) != meta.get(f"{name}_sha256"):
            raise KDError(f"{what} {path} is corrupted: checksum of the {name} does not match")


def _meta_int(meta, name, path):
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        raise KDError(f"logits cache {path} is corrupted: metadata {name}={meta.get(name)!r}") from None


def _layout(meta, tensors, path):
    """{name: (shape, dtype)} a cache with this metadata must hold; and k (None for full storage)."""
    views, n, c = (_meta_int(meta, f, path) for f in ("views", "num_samples", "num_classes"))
    if meta.get("dtype") not in DTYPES:
        raise KDError(f"logits cache {path} is corrupted: metadata dtype={meta.get('dtype')!r}")
    dtype, storage = DTYPES[meta["dtype"]], meta.get("storage", "")
    layout = {"labels": ((n,), torch.int64)}
    if storage == "full":
        k, layout["logits"] = None, ((views, n, c), dtype)
    elif storage.startswith("top") and storage[3:].isdigit() and 1 <= int(storage[3:]) < c:
        k = int(storage[3:])
        layout["topk_logp"] = ((views, n, k), dtype)
        # int16 before the smallest type was chosen; any integer type that holds the classes
        layout["topk_index"] = ((views, n, k), tuple({torch.int16, index_dtype(c)}))
    else:
        raise KDError(f"logits cache {path} is corrupted: metadata storage={storage!r}")
    if "params" in tensors:  # optional; P is whatever the augmentation stored
        layout["params"] = ((views, n, tensors["params"].shape[-1] if tensors["params"].dim() else 0), PARAM_DTYPES)
    if "file_hashes" in tensors:  # an image folder's files (data/folder.py), to name what changed
        layout["file_hashes"] = ((n,), torch.int64)
    if "content" in tensors:  # their bytes' digests (data/content.py); caches before it have none
        layout["content"] = ((n,), torch.int64)
    if "file_paths" in tensors:  # their relative paths, to name a removed file
        layout["file_paths"] = ((tensors["file_paths"].numel(),), torch.uint8)
        layout["file_path_offsets"] = ((n + 1,), torch.int64)
    return layout, k


class SoftTargets:
    """What a validated cache holds. The tensors are memory-mapped, not read: a batch pages in
    only the rows it gathers, and processes on one machine share one copy in the page cache."""

    def __init__(self, tensors, meta, topk, path=None):
        self.meta, self.path = meta, path
        self.views = int(meta["views"])
        self.num_samples = int(meta["num_samples"])
        self.num_classes = int(meta["num_classes"])
        self.storage = meta["storage"]  # "full" or "top<k>"
        self.topk = topk  # k, or None for full storage
        self.dtype = meta["dtype"]
        self.labels = tensors["labels"]  # [N] int64
        self._tensors = tensors

    def __repr__(self):
        return (f"SoftTargets({self.views} views x {self.num_samples} samples x {self.num_classes} classes, "
                f"{self.storage}, {self.dtype})")

    def _view(self, view):
        view = operator.index(view)
        if not 0 <= view < self.views:
            raise KDError(f"view {view} is out of range: the cache holds views 0..{self.views - 1}")
        return view

    def columns(self, view):
        """The columns a student's loader carries for `view`, gathered per batch with its samples:
        full storage, "teacher_logits" [N, C] (the stored slice, no copy); top-k, the stored
        "teacher_topk_logp" and "teacher_topk_index" [N, k], which the step expands per batch
        (topk_logits, via training.topk_objective), so [N, C] is never in memory: at C = 1000
        that is the point."""
        v = self._view(view)
        t = self._tensors
        if self.topk is None:
            return {"teacher_logits": t["logits"][v]}
        return {"teacher_topk_logp": t["topk_logp"][v], "teacher_topk_index": t["topk_index"][v]}

    def gather(self, view, idx):
        """[B, C] rows `idx` of view `view`'s teacher logits: full storage, in the stored dtype (a
        slice is no copy); top-k, the float32 log-probabilities of only those rows, expanded."""
        cols = {name: t[idx] for name, t in self.columns(view).items()}
        return cols["teacher_logits"] if self.topk is None else topk_logits(cols, self.num_classes)

    def logits(self, view):
        """[N, C] teacher logits of `view` (every row of gather)."""
        return self.gather(view, slice(None))

    def content(self):
        """[N] int64 digests of the image files the cache was made from (data/content.py), or None."""
        return self._tensors.get("content")

    def params(self, view):
        """[N, P] augmentation parameters of `view` (float32; an image folder's crops uint16), or
        None when the cache has none."""
        v = self._view(view)
        return self._tensors["params"][v] if "params" in self._tensors else None


def _folder_change(meta, path, data):
    """How an image folder differs from the one the cache at `path` was made from (its stored
    class list and file hashes: data/folder.differences), or None when that is not known."""
    if not hasattr(data, "index") or "classes" not in meta:
        return None
    from .data.folder import differences, paths_from_tensors

    try:
        tensors = _mmap_or_refuse(path)
        paths = (paths_from_tensors(tensors["file_paths"].numpy(), tensors["file_path_offsets"].numpy())
                 if "file_paths" in tensors else None)
        return differences(json.loads(meta["classes"]), tensors["file_hashes"], data.index, paths)
    except (KDError, KeyError, ValueError):
        return None


@reads_tensors("logits cache")
def open_cache(path, key=None, verify=True, views=1, data=None):
    """The SoftTargets in `path`, checked against `key` (the run that wants it) when given, and
    holding at least `views` views; `verify` checks every tensor's stored checksum (reads the
    file once). `data`: the split the run reads; an image folder changed since the cache was
    made is named (how many files differ, the first differing path)."""
    meta = read_metadata(path)
    if key is not None:
        try:
            check_metadata(meta, key, path)
        except CacheMismatch as e:
            change = meta.get("data_fingerprint") != key.data_fingerprint and _folder_change(meta, path, data)
            raise CacheMismatch(f"{e}; the image folder changed: {change}" if change else str(e)) from None
    else:
        _check_version(meta, path)
    have = _meta_int(meta, "views", path)
    if have < views:
        raise CacheMismatch(f"logits cache {path} holds {have} views, the run needs {views} "
                            f"(precompute it again with at least {views} views)")
    tensors = _mmap_or_refuse(path)
    layout, k = _layout(meta, tensors, path)
    _check_tensors(tensors, meta if verify else None, layout, path)
    check_finite(tensors, f"logits cache {path}")  # the checksums say the bytes are the writer's, not that it checked
    return SoftTargets(tensors, meta, k, path)


def load_cache(path, key, verify=True, views=1, data=None):
    """Validated SoftTargets from `path` for a run described by `key`."""
    return open_cache(path, key, verify, views, data)


_MAPPED = {}


def mapped_tensor(path, name, digest):
    """Tensor `name` of the (validated) cache at `path` whose checksum of it is `digest`,
    memory-mapped once per process: how a DataLoader worker reads a K-view cache's crops. Keyed
    by the digest too: a cache rewritten at the same path (recomputed by a later run in this
    process) is mapped anew, never read through the old file's mapping."""
    if (path, digest) not in _MAPPED:
        _MAPPED[(path, digest)] = _mmap_or_refuse(path)
    return _MAPPED[(path, digest)][name]


# --- per-view parts: a resumable precompute ---------------------------------------------------------

def parts_dir(out):
    """The hidden folder of finished views beside the cache `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.views"


def _part_path(out, view):
    return parts_dir(out) / f"view{operator.index(view):05d}.safetensors"


def save_part(out, view, logits, params, key, dtype):
    """Write view `view` of the cache `out` as its own part, atomically: logits [N, C] stored as
    `dtype`, params [N, P] float32 or None; stamped with key, view index and dtype."""
    _check_dtype(dtype)
    path = _part_path(out, view)
    n, c = key.num_samples, key.num_classes
    logits = logits.detach().cpu().to(DTYPES[dtype]).contiguous()
    if tuple(logits.shape) != (n, c):
        raise KDError(f"view {view} logits {tuple(logits.shape)} do not match {key} (expected [{n}, {c}])")
    _check_finite(logits, path, "logits", dtype)
    tensors = {"logits": logits}
    if params is not None:
        tensors["params"] = _as_params(params, 1, n, path, one_view=True)[0]
    meta = {
        "format_version": FORMAT_VERSION,
        **key.as_metadata(),
        "view": str(view),
        "dtype": dtype,
        **{f"{name}_sha256": _checksum(t) for name, t in tensors.items()},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@reads_tensors("view part")
def load_part(out, view, key, dtype):
    """(logits [N, C] as `dtype`, params [N, P] float32 or None) of a finished view, or None when
    there is none. A part made for another key, view or dtype, or corrupted, is deleted and None
    returned: the caller recomputes that view; a stale part is never used."""
    path = _part_path(out, view)
    if not path.exists():
        return None
    try:
        meta = read_metadata(path)
        want = {"format_version": FORMAT_VERSION, **key.as_metadata(), "view": str(view), "dtype": dtype}
        if any(meta.get(name) != value for name, value in want.items()):
            raise KDError("made for another run")
        tensors = _mmap_or_refuse(path, "view part")
        layout = {"logits": ((key.num_samples, key.num_classes), DTYPES[dtype])}
        if "params" in tensors:
            p = tensors["params"]
            layout["params"] = ((key.num_samples, p.shape[-1] if p.dim() else 0), torch.float32)
        _check_tensors(tensors, meta, layout, path, "view part")
        check_finite(tensors, path)
        # copies: the caller stacks and may modify them; the mapping is read-only
        return tensors["logits"].clone(), tensors["params"].clone() if "params" in tensors else None
    except KDError:
        try:
            path.unlink()
        except OSError:
            pass  # cannot delete it: save_part will say why when it writes the view again
        return None


def remove_parts(out):
    """Delete the parts folder of the cache `out` (after the cache itself is written)."""
    shutil.rmtree(parts_dir(out), ignore_errors=True)
