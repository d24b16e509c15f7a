"""What an image folder's files hold: a digest of each file's bytes, taken where the file is read
anyway (the DataLoader worker that decodes it), checked against what was read before.

A folder's fingerprint (folder.py) is its class list, paths and sizes: `stat` only, so a file
rewritten with the same size (BMP, PPM, uncompressed TIFF always are; two images swapped; any
edit with its mtime restored) keeps it. Hashing every file up front would read the whole data
set at every start (140 GB for ImageNet). Instead each file's bytes are hashed as a worker reads
them to decode (sha256's first 8 bytes: about 2 GB/s where the CPU has SHA instructions, 2-4% of
a decode: bench/content.py, docs/performance.md), and compared with

- the run folder's ledger, `<run>/.folders/<fingerprint>.content`: [N] int64, one digest per
  file (0: not read yet), a plain file memory-mapped by every process and worker of the run,
  which write a file's digest the first time it is read (an 8-byte aligned store per file: no
  lock, no gather, nothing lost when a process is killed). Everything a run folder holds for
  that folder state (teacher, checkpoints, students, its cache) was made from the bytes the
  ledger records;
- a cache's own `content` column (cache.py): the digests its precompute read, merged
  into the ledger when the cache is opened for a run (a cache made from other bytes than the
  run folder's models read is refused there, before any file is read).

So a file whose bytes changed is refused, naming it, by the worker that reads it: in the first
epoch (or precompute, or evaluation) that reads it, before the batch holding it reaches the
model; no weight or logit computed from the new bytes is kept beside ones from the old.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import KDError
from ..io import atomic_path

if TYPE_CHECKING:
    from collections.abc import Callable


def digest(data: bytes) -> int:
    """64-bit digest of a file's bytes, as an int64; never 0 (0 marks a file not read yet)."""
    value = int.from_bytes(hashlib.sha256(data).digest()[:8], "little", signed=True)
    return value or 1


def changed_line(path: str | Path, whose: str) -> str:
    return (f"image {path} changed since {whose} read it: same path and size, other bytes; what was trained or "
            "cached from the old file would be mixed with the new: restore the file, or start afresh in a new "
            "--output-dir (and precompute a new cache)")


class Ledger:
    """The run folder's record of the digest of every file of one folder state ([N] int64 file);
    picklable (a DataLoader worker maps the file on first use)."""

    def __init__(self, path: str | Path, n: int) -> None:
        self.path, self.n, self._array = str(path), int(n), None

    @classmethod
    def open(cls, path: str | Path, n: int) -> Ledger:
        """The ledger at `path` for n files, created (all 0) when absent; a file of another size
        (damaged: the fingerprint fixes N) is refused by name."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.truncate(8 * n)  # sparse zeros
        elif path.stat().st_size != 8 * n:
            raise KDError(f"{path} is damaged ({path.stat().st_size} bytes, expected {8 * n} for {n} files): it records "
                          "what this run folder read of the image folder; remove it only with the models and caches "
                          "made in this run folder")
        return cls(path, n)

    def __getstate__(self):
        return {"path": self.path, "n": self.n, "_array": None}

    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype="<i8", mode="r+", shape=(self.n,))
        return self._array

    def check(self, rows: np.ndarray, digests: np.ndarray, name_of: Callable[[int], str]) -> None:
        """Rows [B] read now with digests [B]: refused (one line naming the first changed file)
        where the ledger holds another digest; recorded where it holds none."""
        a = self.array()
        old = a[rows]
        bad = np.flatnonzero((old != 0) & (old != digests))
        if len(bad):
            raise KDError(changed_line(name_of(int(rows[bad[0]])), "this run folder's models or cache"))
        fresh = old == 0
        if fresh.any():
            a[rows[fresh]] = digests[fresh]

    def merge(self, digests: np.ndarray, whose: str, name_of: Callable[[int], str]) -> None:
        """Digests [N] another record holds (a cache's column, 0 where unknown): refused where they
        differ from the ledger's (that record was made from other bytes of a file this run folder
        read); taken where the ledger knows none."""
        a, digests = self.array(), np.asarray(digests, dtype=np.int64)
        bad = np.flatnonzero((a != 0) & (digests != 0) & (a != digests))
        if len(bad):
            raise KDError(f"{whose} was made from other bytes than this run folder's models read: "
                          f"{len(bad)} files differ, first {name_of(int(bad[0]))}; it is stale for this run: "
                          "precompute it again (or restore the files)")
        fresh = (a == 0) & (digests != 0)
        if fresh.any():
            a[fresh] = digests[fresh]
            a.flush()


def ledger_path(listing_path: str | Path) -> Path:
    """The ledger beside a folder state's listing (<run>/.folders/<fingerprint>.safetensors)."""
    p = Path(listing_path)
    return p.with_suffix(".content")




