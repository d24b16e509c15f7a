"""The teacher-logits cache: one safetensors file holding K views of every training sample,
written by one writer (CacheWriter) and read by open_cache. The format is defined here and
nowhere else.

A view is one pass over the training set as the teacher saw it: view v of sample i is the image
augmented with the parameters drawn for (augment_seed, v, i) (with no augmentation, view 0 is
the plain image). Tensors, row i = training sample i:

- `labels` [N] int64.
- full storage: `logits` [K, N, C], fp32 or fp16.
- top-k storage (FKD's compression): `topk_logp` [K, N, k], fp32 or fp16, the teacher's
  log-probabilities at T=1, the k largest of each row sorted descending, and `topk_index`
  [K, N, k], their classes in the smallest integer type that holds C. The other C - k entries
  are rebuilt by expand_topk, which spreads the remaining mass evenly over them. A view of a
  sample costs 3k bytes in fp16 at C <= 256 (4k at ImageNet's int16 indices, 6k in fp32)
  against 2C (4C) for the full logits: about C / 2k times less, 100x for ImageNet at k = 5.
  Beside them, what the losses need beyond the top k (TOPK_STATS, fp32 [K, N] each, 16 bytes a
  view; caches before them have none, `topk_stats` in the metadata says which): `target_logp`
  (the label's log-probability at T=1: DKD's target class), `logit_lse` (the log-sum-exp, so
  the top k's logits are logp + lse), `logit_mean` and `logit_std` (the row's mean and
  unbiased std: logit standardisation).
- `params` [K, N, P], optional: the parameters each view was made with, so a student rebuilds
  exactly the image whose logits it is taught. Their dtype is their augmentation's: float32 for
  the in-memory augmentations (P = 5: dx, dy, flip, angle, scale; kd_accel.augment), uint16 for
  an image folder's RandomResizedCrop (P = 5: top, left, height, width as fractions x 65535 and
  the flip; data/streamed.py, FKD's format). They are different parameters, not one quantity
  in two dtypes: the affine view's angle and scale are fractions of a degree and of 1, which
  uint16 cannot hold, and a crop's fractions in uint16 are exact at half the bytes. A mixed view
  (metadata `mix`, e.g. "mixup(alpha=1)") adds 7 columns after the crop's (data/mixing.py: the
  partner's index in two 16-bit halves, the weight and the box as fractions x 65535: integers,
  exact in either dtype; uint16 when the view has no crop parameters).
- an image folder's identity, optional: `file_hashes` [N] int64 (each file's path and size),
  `content` [N] int64 (the first 8 bytes of the sha256 of the bytes the precompute read),
  `file_paths` uint8 and `file_path_offsets` [N+1] int64 (the relative paths), and the class
  list in the metadata (`classes`): a folder changed since is refused naming the file.

Metadata stamps what produced it: format version, every CacheKey field (data set and split,
sample count, class count, fingerprints of the teacher's weights and of the data, augmentation
spec and seed, the teacher's input), the view count `views`, the `dtype`, the `storage` ("full"
or "top<k>") and a checksum of every stored tensor. Loading checks every stamp against what the
run uses and refuses a mismatch by name: a stale cache is never silently used. A cache with more
views than a run needs serves it (the run reads the first ones); fewer is refused.

Writing (CacheWriter): the file is laid out up front (the safetensors header, then each tensor's
bytes, memory-mapped) and filled row by row at the sample indices each batch names, so no
process holds [K, N, C] (2.6 GB per view of ImageNet in fp16). It grows as `.<name>.partial`
beside the cache with `.<name>.partial.json` listing the finished views and their checksums: a
killed precompute restarts at the first unfinished view of a partial file made for the same key
and layout, and uses a finished view only if its rows still match their checksums and are
finite. The checksums of the whole file are computed once every view is in, written into the
header's reserved space, and the file is renamed over the cache: readers see the old cache or
the whole new one. save_cache writes whole tensors through the same writer.
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .errors import KDError
from .hashing import tensor_digest
from .io import make_dir, remove_leftovers, write_json
from .validate import check_finite, file_kind, nonfinite, reads_tensors

if TYPE_CHECKING:
    from collections.abc import Callable

# 3: K views per sample (logits [K, N, C]), optional top-k storage and augmentation parameters,
# the augmentation stamped in the key; 2 checksummed the labels too (1 covered the logits only).
# An older cache is refused by name, and the run folder's own is recomputed.
FORMAT_VERSION = "3"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MAX_TOPK_CLASSES = 1 << 31  # topk_index is the smallest type that holds the classes: uint8, int16 or int32
PARAM_DTYPES = (torch.float32, torch.uint16)  # params: float32 (in-memory augmentations), uint16 crop fractions (folders)
IDENTITY = ("file_hashes", "file_paths", "file_path_offsets")  # an image folder's listing, as CacheWriter takes it
# the remaining mass outside the top k when it rounds to <= 0: the smallest normal float32, so
# its log (-87.3) stays finite and the other classes keep a (negligible) probability
_TINY = torch.finfo(torch.float32).tiny
_CHUNK_ROWS = 1 << 16  # rows compressed or written at a time: log_softmax makes a float32 copy of its input
_DIGEST_LEN = 32  # hashing.tensor_digest's hex digits
# per view and sample beside a top-k cache's log-probabilities: stored tensor -> its column
# (SoftTargets.columns) -> what it is; what each loss rebuilds from them: soft_targets.TOPK_NEEDS
TOPK_STATS = {"target_logp": ("teacher_target_logp", "the label's log-probability"),
              "logit_lse": ("teacher_lse", "the logits' log-sum-exp"),
              "logit_mean": ("teacher_mean", "the logits' mean"),
              "logit_std": ("teacher_std", "the logits' standard deviation")}
TOPK_STATS_STAMP = " ".join(TOPK_STATS)  # the metadata's `topk_stats` of a cache that stores them


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
    teacher_input: str | None = None
    # each view's mix (data/mixing.py: "mixup(alpha=1)"); "none" is not written, so a cache
    # without a mix keeps the metadata it had before mixes, and one from before reads as "none"
    mix: str = "none"

    def as_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if k != "mix" or v != "none"}


def _checksum(t: torch.Tensor | np.ndarray) -> str:
    """sha256 of a tensor's bytes (hashing.tensor_digest: in 64 MiB pieces, no second copy of a
    big cache): what the metadata's `<name>_sha256` holds."""
    return tensor_digest(torch.from_numpy(np.asarray(t)) if isinstance(t, np.ndarray) else t)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise KDError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_topk(k: Any, num_classes: int) -> int:
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


def index_dtype(num_classes: int) -> torch.dtype:
    """The smallest integer type that holds class indices 0..num_classes-1: uint8 up to 256
    classes, int16 up to 32768 (ImageNet's 1000), else int32."""
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 1 << 15 else torch.int32


def _nonfinite_rows(t: torch.Tensor) -> int:
    """Rows (last dim; a [B] column: its entries) of `t` holding NaN or inf."""
    if not t.is_floating_point():
        return 0
    return int((~torch.isfinite(t if t.dim() > 1 else t[:, None])).any(dim=-1).sum())


def _check_finite(t: torch.Tensor, path: Path | str, what: str, dtype: str) -> None:
    """Refuse rows (last dim) of `t` holding NaN or inf; checked after the cast to the stored dtype."""
    bad = _nonfinite_rows(t)
    if bad:
        rows = t.shape[:-1].numel()
        raise KDError(f"refusing to write {path}: {bad} of {rows} rows of {what} are not finite as {dtype}")


# --- top-k compression (FKD's marginal smoothing) -------------------------------------------------

def compress_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., C] -> (logp [..., k] float32, index [..., k] int64): the k largest
    log-probabilities at T=1 (log_softmax), sorted descending, and their classes."""
    k = check_topk(k, logits.shape[-1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.topk(logp, k, dim=-1, sorted=True)


def compress_topk_stats(logits: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """logits [B, C], labels [B] -> what a top-k cache stores of them: "topk_logp", "topk_index"
    [B, k] (compress_topk's) and TOPK_STATS [B] float32, all from one float32 log_softmax (so
    the label's log-probability is the top k's own value where it is among them)."""
    x = logits.float()
    logp = torch.log_softmax(x, dim=-1)
    top, index = torch.topk(logp, check_topk(k, x.shape[-1]), dim=-1, sorted=True)
    return {"topk_logp": top, "topk_index": index, "target_logp": logp.gather(-1, labels.long()[:, None])[:, 0],
            "logit_lse": torch.logsumexp(x, dim=-1), "logit_mean": x.mean(dim=-1), "logit_std": x.std(dim=-1)}


def expand_topk(logp: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
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


def topk_logits(cols: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """[B, C] float32 log-probabilities from a top-k cache's columns (SoftTargets.columns, or a
    batch of their rows): "teacher_topk_logp" and "teacher_topk_index" [B, k], expanded."""
    return expand_topk(cols["teacher_topk_logp"], cols["teacher_topk_index"], num_classes)


def _known(cols: dict[str, torch.Tensor], num_classes: int, labels: torch.Tensor,
           label_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities [B, C] float32, known [B, C] bool): the top k's stored values and the
    label's (teacher_target_logp) where the top k lack it and the sample keeps its label
    (label_mask; a sample without a label reveals nothing of it); 0 where unknown."""
    logp, index = cols["teacher_topk_logp"].float(), cols["teacher_topk_index"].long()
    shape = (*logp.shape[:-1], num_classes)
    known = torch.zeros(shape, dtype=torch.bool, device=logp.device).scatter_(-1, index, True)
    values = logp.new_zeros(shape).scatter_(-1, index, logp)
    at = labels.long()[:, None]
    add = ~known.gather(-1, at)  # [B, 1]: the label outside the top k
    if label_mask is not None:
        add &= label_mask.bool()[:, None]
    values.scatter_(-1, at, torch.where(add, cols["teacher_target_logp"].float()[:, None], values.gather(-1, at)))
    return values, known.scatter_(-1, at, add | known.gather(-1, at))


def topk_logit_estimate(cols: dict[str, torch.Tensor], num_classes: int, labels: torch.Tensor,
                        label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C] float32 logits rebuilt from a top-k cache's columns with its statistics: the top
    k's and the label's (as _known says) exactly, logp + lse; every other class the mean of the
    others, which the row's stored mean gives (C * mean - the known logits' sum), so the row
    keeps its own mean. Standardised, its std is the stored one (losses.zscore's stats), not the
    estimate's. At T > 1 this tail is closer than the even spread of the remaining mass, which
    is exact at T = 1 only (docs/cache.md: the errors measured per loss)."""
    values, known = _known(cols, num_classes, labels, label_mask)
    logits = values + cols["teacher_lse"].float()[:, None]
    unknown = (~known).sum(-1, keepdim=True)
    total = cols["teacher_mean"].float()[:, None] * num_classes
    tail = (total - torch.where(known, logits, 0.0).sum(-1, keepdim=True)) / unknown.clamp_min(1)
    return torch.where(known, logits, tail)


# --- writing --------------------------------------------------------------------------------------

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "U16": np.uint16, "U8": np.uint8}
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
              torch.uint16: "U16", torch.uint8: "U8"}


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def partial_paths(path: Path | str) -> tuple[Path, Path]:
    """(the file a cache at `path` grows as, the list of its finished views) beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.partial", path.parent / f".{path.name}.partial.json"


def _host_numpy(t: Any, dtype: Any) -> np.ndarray:
    """A batch's column on the host as numpy of `dtype` (torch has few uint16 operations: an int
    column, e.g. crops gathered as int32, is converted by numpy)."""
    t = torch.as_tensor(t).detach().cpu()
    if t.dtype == torch.uint16:
        t = t.to(torch.int32)
    return t.numpy().astype(dtype, copy=False)


class CacheWriter:
    """Write a cache for `key` (CacheKey) of `views` views row by row: write(view, idx, logits,
    params, digests) for every batch, view_done(view) once a view's rows are all in, finish()
    when every view is done (or discard()). labels [N] int64; params_cols P and params_dtype of
    each view's parameters (None: none stored); identity: an image folder's listing
    ({"classes": names, "file_hashes": [N] int64, "file_paths": uint8, "file_path_offsets":
    [N+1] int64}), with which each write brings the digests of the files read (`content`).
    resume False starts over even where a partial file for the same cache exists."""

    @reads_tensors("partial cache")
    def __init__(self, path: Path | str, key: CacheKey, views: int, labels: torch.Tensor, dtype: str = "fp16",
                 topk: int | None = None, params_cols: int | None = None, params_dtype: torch.dtype = torch.float32,
                 identity: dict[str, Any] | None = None, resume: bool = True):
        _check_dtype(dtype)
        self.path, (self.tmp, self.state) = Path(path), partial_paths(path)
        if self.path.is_dir():
            raise KDError(f"cannot write {self.path}: it is a directory (remove or rename it)")
        n, c = key.num_samples, key.num_classes
        self.views, self.num_samples, self.num_classes, self.dtype = views, n, c, DTYPES[dtype]
        self.topk = topk and check_topk(topk, c)
        identity = identity or {}
        layout = {"labels": ((n,), torch.int64)}
        if self.topk:
            layout["topk_logp"] = ((views, n, self.topk), self.dtype)
            layout["topk_index"] = ((views, n, self.topk), index_dtype(c))
            layout.update({name: ((views, n), torch.float32) for name in TOPK_STATS})
        else:
            layout["logits"] = ((views, n, c), self.dtype)
        if params_cols:
            if params_dtype not in PARAM_DTYPES:
                raise KDError(f"view parameters are stored as float32 or uint16, not {params_dtype}")
            layout["params"] = ((views, n, params_cols), params_dtype)
        fixed = {"labels": torch.as_tensor(labels, dtype=torch.int64)}
        self.labels = fixed["labels"]  # the label of each row: its log-probability is stored (top-k)
        if self.topk and len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < c:
            raise KDError(f"cache {self.path}: labels must be class indices 0..{c - 1}, got "
                          f"{int(self.labels.min())}..{int(self.labels.max())}")
        if "file_hashes" in identity:
            fixed["file_hashes"] = torch.as_tensor(identity["file_hashes"], dtype=torch.int64)
            layout["file_hashes"] = ((n,), torch.int64)
            layout["content"] = ((n,), torch.int64)
        if "file_paths" in identity:
            fixed["file_paths"] = torch.as_tensor(identity["file_paths"], dtype=torch.uint8)
            fixed["file_path_offsets"] = torch.as_tensor(identity["file_path_offsets"], dtype=torch.int64)
            layout["file_paths"] = ((len(fixed["file_paths"]),), torch.uint8)
            layout["file_path_offsets"] = ((n + 1,), torch.int64)
        # widest elements first: every tensor starts at a multiple of its element size
        self.layout = dict(sorted(layout.items(), key=lambda item: -item[1][1].itemsize))
        self.meta = {"format_version": FORMAT_VERSION, **key.as_metadata(), "views": str(views), "dtype": dtype,
                     "storage": f"top{self.topk}" if self.topk else "full",
                     **({"topk_stats": TOPK_STATS_STAMP} if self.topk else {})}
        if "classes" in identity:
            self.meta["classes"] = json.dumps(list(identity["classes"]))
        for name, t in fixed.items():  # refused before anything is written
            if tuple(t.shape) != self.layout[name][0]:
                raise KDError(f"cache {self.path}: {name} {tuple(t.shape)}, expected {self.layout[name][0]}")
        header = self._header("0" * _DIGEST_LEN)
        self.layout_digest = hashlib.sha256(header).hexdigest()[:_DIGEST_LEN]
        self.data_start = 8 + len(header)
        self.size = self.data_start + sum(_nbytes(s, d) for s, d in self.layout.values())
        self._digests, self._bad = {}, {}
        done = self._resume() if resume else None
        if done is None:  # a fresh file of the full size (sparse until written)
            self.discard()
            make_dir(self.tmp.parent)
            with open(self.tmp, "wb") as f:
                f.write(len(header).to_bytes(8, "little") + header)
                f.truncate(self.size)
        self.arrays = {name: np.memmap(self.tmp, dtype=_NP_DTYPES[_ST_DTYPES[d]], mode="r+",
                                       offset=self.data_start + off, shape=s)
                       for name, (s, d), off in zip(self.layout, self.layout.values(), self._offsets())}
        self.done = self._verified(done or set())  # a resumed view is used only as it was written
        if not self.done:
            for name, t in fixed.items():
                self.arrays[name][:] = t.numpy()

    def _offsets(self) -> list[int]:
        off, out = 0, []
        for shape, dtype in self.layout.values():
            out.append(off)
            off += _nbytes(shape, dtype)
        return out

    def _header(self, digest_of: str | Callable[[str], str]) -> bytes:
        """The safetensors header (bytes, padded to 8) with each tensor's checksum:
        digest_of(name) or one placeholder of the same length for every tensor."""
        meta = dict(self.meta)
        for name in self.layout:
            meta[f"{name}_sha256"] = digest_of if isinstance(digest_of, str) else digest_of(name)
        header, off = {"__metadata__": meta}, 0
        for name, (shape, dtype) in self.layout.items():
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + _nbytes(shape, dtype)]}
            off += _nbytes(shape, dtype)
        text = json.dumps(header, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)

    def _resume(self) -> set[int] | None:
        """The finished views of a partial file made for this very cache (its metadata and
        layout), or None."""
        try:
            state = json.loads(self.state.read_text())
            if (state.get("meta") == self.meta and state.get("layout") == self.layout_digest
                    and self.tmp.stat().st_size == self.size):
                self._digests = state.get("digests") or {}
                return {int(v) for v in state["done"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def write(self, view: int, idx: Any, logits: torch.Tensor, params: Any = None, digests: Any = None) -> None:
        """Rows `idx` [B] of view `view`: logits [B, C] (stored as the cache's dtype, or as their
        top-k log-probabilities and TOPK_STATS), params [B, P] (the view's parameters) and the digests [B] of
        the files read (the same in every view: a file rewritten during the precompute is
        refused). Rows not finite as stored are counted, and view_done refuses the view."""
        rows = _host_numpy(idx, np.int64)
        want = {"logits": (len(rows), self.num_classes)}
        if params is not None:
            want["params"] = (len(rows), self.layout["params"][0][-1] if "params" in self.layout else 0)
        have = {"logits": tuple(logits.shape), "params": params is not None and tuple(params.shape)}
        if any(have[name] != shape for name, shape in want.items()):
            raise KDError(f"cache {self.path}: {len(rows)} rows with " + ", ".join(f"{name} {have[name]}" for name in want)
                          + ": expected " + " and ".join(f"[{', '.join(map(str, shape))}]" for shape in want.values()))
        at = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) and (np.diff(rows) == 1).all() else rows
        if digests is not None and "content" in self.arrays:
            digests, known = _host_numpy(digests, np.int64), self.arrays["content"][at]
            bad = np.flatnonzero((known != 0) & (known != digests))
            if len(bad):
                raise KDError(f"cache {self.path}: the image at index {int(rows[bad[0]])} changed during the precompute "
                              "(its bytes differ from an earlier view's): keep the folder still while it runs")
            self.arrays["content"][at] = digests
        logits = logits.detach().cpu()
        if self.topk:
            stored = compress_topk_stats(logits, self.labels[torch.from_numpy(rows)], self.topk)
            stored["topk_logp"] = stored["topk_logp"].to(self.dtype)
            stored["topk_index"] = stored["topk_index"].to(self.layout["topk_index"][1])
        else:
            stored = {"logits": logits.to(self.dtype)}
        if params is not None:
            stored["params"] = torch.from_numpy(_host_numpy(params, _NP_DTYPES[_ST_DTYPES[self.layout["params"][1]]]))
        for name, t in stored.items():
            bad = _nonfinite_rows(t)
            if bad:
                self._bad[(view, name)] = self._bad.get((view, name), 0) + bad
            self.arrays[name][view, at] = t.numpy()

    def view_done(self, view: int) -> None:
        """Flush view `view` to disk and record it as finished (a resumed precompute skips it);
        a view whose rows are not all finite as stored is refused."""
        for (v, name), bad in sorted(self._bad.items()):
            if v == view:
                what = {"topk_logp": "top-k log-probabilities", "params": "view parameters",
                        **{k: desc for k, (_, desc) in TOPK_STATS.items()}}.get(name, name)
                dtype = self.meta["dtype"] if name != "params" else str(self.layout["params"][1]).removeprefix("torch.")
                raise KDError(f"refusing to write {self.path}: {bad} of {self.num_samples} rows of {what} "
                              f"{f'(view {view}) ' if self.views > 1 else ''}are not finite as {dtype}")
        for a in self.arrays.values():
            a.flush()
        self.done.add(int(view))
        self._digests = {**self._digests, **self._view_digests(view)}
        write_json(self.state, {"meta": self.meta, "layout": self.layout_digest, "done": sorted(self.done),
                                "digests": self._digests})

    def _view_digests(self, view: int) -> dict[str, str]:
        """{"<view>/<name>": digest} of view `view`'s rows of each [K, N, ...] tensor, and
        {"<name>": digest} of the others (labels, file hashes) as they are now."""
        return {f"{view}/{name}" if self._per_view(a) else name:
                _checksum(a[view] if self._per_view(a) else a)
                for name, a in self.arrays.items()}

    def _per_view(self, array: np.ndarray) -> bool:
        return array.ndim >= 2 and array.shape[0] == self.views

    def _verified(self, done: set[int]) -> set[int]:
        """The views of `done` (resumed from the partial file) whose rows are what view_done
        recorded (checksums) and finite; all of none if the other tensors changed. A view that
        fails is written again, never used."""
        if not done:
            return set()
        want, kept = self._digests, set()
        for view in sorted(done):
            have = self._view_digests(view)
            if any(want.get(k) != d for k, d in have.items() if "/" not in k):
                return set()  # labels or file hashes changed: start the file over
            rows = {name: torch.from_numpy(np.asarray(a[view])) for name, a in self.arrays.items() if self._per_view(a)}
            if all(want.get(k) == d for k, d in have.items() if "/" in k) and nonfinite(rows) is None:
                kept.add(view)
        return kept

    def finish(self) -> None:
        """Checksums into the header, then the file renamed over the cache."""
        if len(self.done) != self.views:
            raise KDError(f"cache {self.path}: {self.views - len(self.done)} views not written")
        digests = {name: _checksum(a) for name, a in self.arrays.items()}
        header = self._header(digests.__getitem__)
        assert 8 + len(header) == self.data_start, "the header changed length"
        for a in self.arrays.values():
            a.flush()
        self.arrays = {}
        with open(self.tmp, "r+b") as f:
            f.seek(8)
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        self.state.unlink(missing_ok=True)
        remove_leftovers(self.path)  # a killed atomic writer's temporaries of this file (io.atomic_path's rule)

    def discard(self) -> None:
        """Remove the partial file and its list of views (a refused precompute writes nothing)."""
        self.arrays = {}
        for p in (self.tmp, self.state):
            p.unlink(missing_ok=True)


def _as_params(params: torch.Tensor, views: int, n: int, path: Path | str, one_view: bool) -> torch.Tensor:
    """params [K, N, P] (or [N, P] beside one view given as [N, C]) -> contiguous [K, N, P],
    float32 unless given as uint16 crops."""
    params = params.detach().cpu()
    params = params if params.dtype == torch.uint16 else params.float()
    if one_view and params.dim() == 2:
        params = params[None]
    if params.dim() != 3 or tuple(params.shape[:2]) != (views, n):
        raise KDError(f"augmentation params {tuple(params.shape)} do not match the logits: "
                      f"expected [{views}, {n}, P] (views, samples, parameters)")
    _check_finite(params, path, "augmentation params", "float32")
    return params.contiguous()


def save_cache(path: Path | str, logits: torch.Tensor, labels: torch.Tensor, key: CacheKey, dtype: str = "fp32",
               params: torch.Tensor | None = None, topk: int | None = None) -> None:
    """Write a whole cache at once, through CacheWriter (atomically: nothing is written when a
    check fails). logits: [N, C] (one view) or [K, N, C], any float dtype; labels [N]; params:
    None or [K, N, P] (the augmentation parameters of each view); topk: None (store the full
    logits as `dtype`) or k (store the top-k log-probabilities as `dtype`)."""
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
    if topk is None:
        _check_finite(logits.to(DTYPES[dtype]), path, "logits", dtype)  # fp16 turns logits beyond 65504 into inf
    else:
        k = check_topk(topk, c)
        _check_finite(logits, path, "logits", "given")  # NaN or inf has no log-probability
        for i in range(0, n, _CHUNK_ROWS):  # below -65504 is -inf in fp16
            _check_finite(compress_topk(logits[:, i : i + _CHUNK_ROWS], k)[0].to(DTYPES[dtype]), path,
                          "top-k log-probabilities", dtype)
    if params is not None:
        params = _as_params(params, views, n, path, one_view)
    writer = CacheWriter(path, key, views, labels, dtype, topk, params_cols=None if params is None else params.shape[-1],
                         params_dtype=None if params is None else params.dtype, resume=False)
    try:
        rows = torch.arange(n)
        for v in range(views):
            for i in range(0, n, _CHUNK_ROWS):
                writer.write(v, rows[i : i + _CHUNK_ROWS], logits[v, i : i + _CHUNK_ROWS],
                             None if params is None else params[v, i : i + _CHUNK_ROWS])
            writer.view_done(v)
        writer.finish()
    except BaseException:
        writer.discard()
        raise


# --- reading --------------------------------------------------------------------------------------

def read_metadata(path: Path | str) -> dict[str, str]:
    """The metadata of the safetensors file at `path` (no tensor read); a folder, a missing file
    or a file of another kind is one line naming it."""
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


def _check_version(meta: dict[str, str], path: Path | str) -> None:
    if "arch" in meta and "format_version" not in meta:  # what models.save_model stamps
        raise CacheMismatch(f"{path} holds a {meta.get('role', meta['arch'])!r} model, not a teacher-logits cache")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CacheMismatch(
            f"{path}: format version {meta.get('format_version')!r}, this kd_accel reads {FORMAT_VERSION!r}"
        )


def check_cache_file(path: Path | str, flag: str) -> None:
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


def check_metadata(meta: dict[str, str], key: CacheKey, path: Path | str = "cache") -> None:
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
        "mix": "mix differs",
    }
    have = {"mix": "none", **meta}  # a cache's mix is written only when it has one
    diffs = [
        f"{why} ({name}: cache {have.get(name)!r}, run {want!r})"
        for name, want in {**key.as_metadata(), "mix": key.mix}.items()
        if have.get(name) != want
        for why in [labels[name]]
    ]
    if diffs:
        raise CacheMismatch(f"stale logits cache {path}: " + "; ".join(diffs))


def _mmap_tensors(path: str) -> dict[str, torch.Tensor]:
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


def _mmap_or_refuse(path: Path | str, what: str = "logits cache") -> dict[str, torch.Tensor]:
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
        stats = meta.get("topk_stats")
        if stats not in (None, TOPK_STATS_STAMP):
            raise KDError(f"logits cache {path} is corrupted: metadata topk_stats={stats!r}")
        if stats:  # written since the losses that need them (absent: an older top-k cache)
            layout.update({name: ((views, n), torch.float32) for name in TOPK_STATS})
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

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], topk: int | None,
                 path: Path | str | None = None):
        self.meta, self.path = meta, path
        self.views = int(meta["views"])
        self.num_samples = int(meta["num_samples"])
        self.num_classes = int(meta["num_classes"])
        self.storage = meta["storage"]  # "full" or "top<k>"
        self.topk = topk  # k, or None for full storage
        # the columns a top-k cache holds besides its top k (TOPK_STATS' names; none: an older one)
        self.stats = tuple(col for name, (col, _) in TOPK_STATS.items() if name in tensors)
        self.dtype = meta["dtype"]
        self.labels = tensors["labels"]  # [N] int64
        self._tensors = tensors

    def __repr__(self) -> str:
        return (f"SoftTargets({self.views} views x {self.num_samples} samples x {self.num_classes} classes, "
                f"{self.storage}, {self.dtype})")

    def _view(self, view: int) -> int:
        view = operator.index(view)
        if not 0 <= view < self.views:
            raise KDError(f"view {view} is out of range: the cache holds views 0..{self.views - 1}")
        return view

    def columns(self, view: int) -> dict[str, torch.Tensor]:
        """The columns a student's loader carries for `view`, gathered per batch with its samples:
        full storage, "teacher_logits" [N, C] (the stored slice, no copy); top-k, the stored
        "teacher_topk_logp" and "teacher_topk_index" [N, k], which the step expands per batch
        (topk_logits, via soft_targets.topk_objective), so [N, C] is never in memory: at C = 1000
        that is the point; and [N] each of TOPK_STATS where stored ("teacher_target_logp",
        "teacher_lse", "teacher_mean", "teacher_std")."""
        v = self._view(view)
        t = self._tensors
        if self.topk is None:
            return {"teacher_logits": t["logits"][v]}
        return {"teacher_topk_logp": t["topk_logp"][v], "teacher_topk_index": t["topk_index"][v],
                **{col: t[name][v] for name, (col, _) in TOPK_STATS.items() if name in t}}

    def gather(self, view: int, idx: Any) -> torch.Tensor:
        """[B, C] rows `idx` of view `view`'s teacher logits: full storage, in the stored dtype (a
        slice is no copy); top-k, the float32 log-probabilities of only those rows, expanded."""
        cols = {name: t[idx] for name, t in self.columns(view).items()}
        return cols["teacher_logits"] if self.topk is None else topk_logits(cols, self.num_classes)

    def logits(self, view: int) -> torch.Tensor:
        """[N, C] teacher logits of `view` (every row of gather)."""
        return self.gather(view, slice(None))

    def content(self) -> torch.Tensor | None:
        """[N] int64 digests of the image files the cache was made from (data/content.py), or None."""
        return self._tensors.get("content")

    def params(self, view: int) -> torch.Tensor | None:
        """[N, P] augmentation parameters of `view` (float32; an image folder's crops uint16), or
        None when the cache has none."""
        v = self._view(view)
        return self._tensors["params"][v] if "params" in self._tensors else None


    def column(self, name: str) -> CacheColumn:
        """A picklable reader of stored tensor `name` (e.g. "params", a folder's crops): what a
        DataLoader worker maps, never this process's mapping."""
        return CacheColumn(str(self.path), name, self.meta[f"{name}_sha256"])


def stored_identity(path: Path | str, meta: dict[str, str] | None = None) -> dict[str, Any] | None:
    """What the cache at `path` recorded of the image folder it was made from (CacheWriter's
    identity): {"classes": [names], "file_hashes": [N] int64, and "file_paths" uint8 /
    "file_path_offsets" [N+1] int64 where it kept them}; None when it recorded none (a cache of
    an in-memory set, whose fingerprint is its content)."""
    meta = read_metadata(path) if meta is None else meta
    if "classes" not in meta:
        return None
    tensors = _mmap_or_refuse(path)
    return {"classes": json.loads(meta["classes"]), **{name: tensors[name] for name in IDENTITY if name in tensors}}


@reads_tensors("logits cache")
def open_cache(path: Path | str, key: CacheKey | None = None, verify: bool = True, views: int = 1,
               explain: Callable[[dict[str, Any]], str | None] | None = None) -> SoftTargets:
    """The SoftTargets in `path`, checked against `key` (the run that wants it) when given, and
    holding at least `views` views; `verify` checks every tensor's stored checksum (reads the
    file once). `explain`: how the run's data differ from those the cache recorded
    (stored_identity -> one line or None: the data source's explain_identity), said when the
    data fingerprints differ (an image folder: how many files differ, the first by name)."""
    meta = read_metadata(path)
    if key is not None:
        try:
            check_metadata(meta, key, path)
        except CacheMismatch as e:
            change = None
            if explain is not None and meta.get("data_fingerprint") != key.data_fingerprint:
                try:
                    stored = stored_identity(path, meta)
                    change = stored and explain(stored)
                except (KDError, KeyError, ValueError):
                    change = None
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


_MAPPED: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


@dataclass(frozen=True)
class CacheColumn:
    """Tensor `name` of the (validated) cache at `path` whose checksum of it is `digest`, read
    by calling it: memory-mapped once per process, so a DataLoader worker reads a K-view cache's
    crops without anything but this small picklable object crossing to it, and the data layer
    needs no cache module. Keyed by the digest too: a cache rewritten at the same path (recomputed
    by a later run in this process) is mapped anew, never read through the old file's mapping."""

    path: str
    name: str
    digest: str

    def __call__(self) -> torch.Tensor:
        if (self.path, self.digest) not in _MAPPED:
            # the file at the path now must be the one validated: its header's checksum of the
            # tensor (the header alone is read), else another run replaced it meanwhile
            if read_metadata(self.path).get(f"{self.name}_sha256") != self.digest:
                raise KDError(f"logits cache {self.path} was replaced after this run validated it (its {self.name} "
                              "differ); rerun, and give each run its own cache path")
            _MAPPED[(self.path, self.digest)] = _mmap_or_refuse(self.path)
        return _MAPPED[(self.path, self.digest)][self.name]
