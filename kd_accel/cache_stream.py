"""The teacher-logits cache written row by row: how an image folder's precompute fills a cache
that no process could hold ([K, N, C] is 2.6 GB per view of ImageNet in fp16).

The file is cache.py's format exactly (the same tensors, metadata and checksums, read by
cache.open_cache), laid out up front: the safetensors header, then each tensor's bytes, mapped
with np.memmap and written at the rows each batch's sample indices name. A folder cache adds
`file_hashes` [N] int64 and the class list (metadata `classes`), so that a changed folder is
refused naming what changed, and stores its crops as uint16 fractions (`params` [K, N, 5]).

Resumable: the file grows as `.<name>.partial` beside the cache with a `.<name>.partial.json`
listing the finished views; a killed precompute restarts at the first unfinished view of a
partial file made for the same key. The checksums are computed once every view is in (one
read of the file), written into the header's reserved space, and the file is renamed over the
cache: readers see the old cache or the whole new one.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch

from .cache import DTYPES, FORMAT_VERSION, _NP_DTYPES, _ST_DTYPES, _check_dtype, _check_finite, check_topk, \
    compress_topk, index_dtype
from .errors import KDError
from .hashing import tensor_digest
from .io import write_json
from .validate import nonfinite, reads_tensors

_DIGEST_LEN = 32  # hashing.tensor_digest's hex digits


def partial_paths(path):
    path = Path(path)
    return path.parent / f".{path.name}.partial", path.parent / f".{path.name}.partial.json"


class CacheWriter:
    """Write a cache for `key` (cache.CacheKey) of `views` views row by row: write(view, idx,
    logits, params), view_done(view), finish(). labels [N] int64; params_cols P of uint16
    crops per view (None: none); file_hashes [N] int64, classes and paths (folder.PathList) of an
    image folder, whose files' digests (`content`, [N] int64, data/content.py) each write brings."""

    @reads_tensors("partial cache")
    def __init__(self, path, key, views, labels, dtype="fp16", topk=None, params_cols=None, file_hashes=None,
                 classes=None, paths=None):
        _check_dtype(dtype)
        self.path, (self.tmp, self.state) = Path(path), partial_paths(path)
        n, c = key.num_samples, key.num_classes
        self.views, self.dtype, self.topk = views, DTYPES[dtype], topk and check_topk(topk, c)
        layout = {"labels": ((n,), torch.int64)}
        if topk:
            layout["topk_logp"] = ((views, n, topk), self.dtype)
            layout["topk_index"] = ((views, n, topk), index_dtype(c))
        else:
            layout["logits"] = ((views, n, c), self.dtype)
        if params_cols:
            layout["params"] = ((views, n, params_cols), torch.uint16)
        if file_hashes is not None:
            layout["file_hashes"] = ((n,), torch.int64)
            layout["content"] = ((n,), torch.int64)
        if paths is not None:
            path_buffer, path_offsets = paths.tensors()
            layout["file_paths"] = ((len(path_buffer),), torch.uint8)
            layout["file_path_offsets"] = ((n + 1,), torch.int64)
        self.layout = layout
        self.meta = {"format_version": FORMAT_VERSION, **key.as_metadata(), "views": str(views), "dtype": dtype,
                     "storage": f"top{topk}" if topk else "full"}
        if classes is not None:
            self.meta["classes"] = json.dumps(list(classes))
        header = self._header("0" * _DIGEST_LEN)
        self.data_start = 8 + len(header)
        self.size = self.data_start + sum(_nbytes(s, d) for s, d in layout.values())
        self.done = self._resume()
        if self.done is None:  # a fresh file of the full size (sparse until written)
            self.done = set()
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(self.tmp, "wb") as f:
                f.write(len(header).to_bytes(8, "little") + header)
                f.truncate(self.size)
        self.arrays = {name: np.memmap(self.tmp, dtype=_NP_DTYPES[_ST_DTYPES[d]], mode="r+",
                                       offset=self.data_start + off, shape=s)
                       for name, (s, d), off in zip(layout, layout.values(), self._offsets())}
        self.done = self._verified(self.done)  # a resumed view is used only as it was written
        if not self.done:
            self.arrays["labels"][:] = torch.as_tensor(labels, dtype=torch.int64).numpy()
            if file_hashes is not None:
                self.arrays["file_hashes"][:] = torch.as_tensor(file_hashes, dtype=torch.int64).numpy()
            if paths is not None:
                self.arrays["file_paths"][:] = path_buffer.numpy()
                self.arrays["file_path_offsets"][:] = path_offsets.numpy()

    def _offsets(self):
        off, out = 0, []
        for shape, dtype in self.layout.values():
            out.append(off)
            off += _nbytes(shape, dtype)
        return out

    def _header(self, digest_of):
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

    def _resume(self):
        """The finished views of a partial file made for this very cache, or None."""
        try:
            state = json.loads(self.state.read_text())
            if state.get("meta") == self.meta and self.tmp.stat().st_size == self.size:
                self._digests = state.get("digests") or {}
                return set(state["done"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for p in (self.tmp, self.state):
            p.unlink(missing_ok=True)
        return None

    def write(self, view, idx, logits, params=None, digests=None):
        """Rows `idx` [B] of view `view`: logits [B, C] (stored as the cache's dtype, or as their
        top-k log-probabilities), params [B, P] (uint16 crops) and the digests [B] of the files
        read (the same in every view: a file rewritten during the precompute is refused)."""
        rows = idx.cpu().numpy()
        if digests is not None and "content" in self.arrays:
            digests, known = digests.cpu().numpy().astype(np.int64), self.arrays["content"][rows]
            bad = np.flatnonzero((known != 0) & (known != digests))
            if len(bad):
                raise KDError(f"cache {self.path}: the image at index {int(rows[bad[0]])} changed during the precompute "
                              "(its bytes differ from an earlier view's): keep the folder still while it runs")
            self.arrays["content"][rows] = digests
        logits = logits.detach().float().cpu()
        if self.topk:
            _check_finite(logits, self.path, "logits", "given")
            logp, index = compress_topk(logits, self.topk)
            logp = logp.to(self.dtype)
            _check_finite(logp, self.path, "top-k log-probabilities", self.meta["dtype"])
            self.arrays["topk_logp"][view, rows] = logp.numpy()
            self.arrays["topk_index"][view, rows] = index.to(self.layout["topk_index"][1]).numpy()
        else:
            stored = logits.to(self.dtype)
            _check_finite(stored, self.path, "logits", self.meta["dtype"])
            self.arrays["logits"][view, rows] = stored.numpy()
        if params is not None:
            self.arrays["params"][view, rows] = params.cpu().to(torch.int32).numpy().astype(np.uint16)

    def view_done(self, view):
        """Flush view `view` to disk and record it as finished (a resumed precompute skips it)."""
        for a in self.arrays.values():
            a.flush()
        self.done.add(int(view))
        self._digests = {**getattr(self, "_digests", {}), **self._view_digests(view)}
        write_json(self.state, {"meta": self.meta, "done": sorted(self.done), "digests": self._digests})

    def _view_digests(self, view):
        """{"<view>/<name>": digest} of view `view`'s rows of each [K, N, ...] tensor, and
        {"<name>": digest} of the others (labels, file hashes) as they are now."""
        return {f"{view}/{name}" if self._per_view(a) else name:
                tensor_digest(torch.from_numpy(np.asarray(a[view] if self._per_view(a) else a)))
                for name, a in self.arrays.items()}

    def _per_view(self, array):
        return array.ndim >= 2 and array.shape[0] == self.views

    def _verified(self, done):
        """The views of `done` (resumed from the partial file) whose rows are what view_done
        recorded (checksums) and finite; all of none if the other tensors changed. A view that
        fails is written again, never used."""
        if not done:
            return done
        want, kept = getattr(self, "_digests", {}), set()
        for view in sorted(done):
            have = self._view_digests(view)
            if any(want.get(k) != d for k, d in have.items() if "/" not in k):
                return set()  # labels or file hashes changed: start the file over
            rows = {name: torch.from_numpy(np.asarray(a[view])) for name, a in self.arrays.items() if self._per_view(a)}
            if all(want.get(k) == d for k, d in have.items() if "/" in k) and nonfinite(rows) is None:
                kept.add(view)
        return kept

    def finish(self):
        """Checksums into the header, then the file renamed over the cache."""
        if len(self.done) != self.views:
            raise KDError(f"cache {self.path}: {self.views - len(self.done)} views not written")
        digests = {name: tensor_digest(torch.from_numpy(np.asarray(a))) for name, a in self.arrays.items()}
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


def _nbytes(shape, dtype):
    return int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
