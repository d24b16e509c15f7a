"""CPU runs: keep freed tensor memory in the process instead of handing it back to the kernel.

A training step on a CPU allocates and frees the same few activation buffers every step (5 MB
each for the teacher at batch 100). glibc's malloc serves blocks of that size with mmap, or
trims them off the top of its heap once freed, so every step gets fresh pages from the kernel
and touches each one first: thousands of page faults a step (2,800 for the student, 6,600 for
the teacher, measured), which on a virtual machine can cost as much as the arithmetic. Raising
malloc's mmap and trim thresholds keeps those blocks in the heap for the next step (about 25
faults a step): on a 2-core AMD EPYC, 1.6-2x faster steps in a bare loop and 1.26x (teacher)
to 1.30x (distillation) faster epochs in bench/speed.py (docs/performance.md).
Nothing about the arithmetic changes; the process keeps up to TRIM_THRESHOLD of freed memory.

Applied by pipeline.make_accelerator on CPU runs of the in-memory data sets only (glibc only;
an image folder's epochs measured no faster with it, and its kept heap grew with the epoch's
length: docs/performance.md), and never when the user
chose an allocator setting (MALLOC_*_ / GLIBC_TUNABLES) or another allocator (LD_PRELOAD), or
turned it off with KD_ACCEL_KEEP_FREED_MEMORY=0.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: blocks up to this size come from the heap
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it is returned

_applied = None


def user_chose_allocator(env: Mapping[str, str] | None = None) -> str | None:
    """The name of what the user set that this module must not override, or None."""
    env = os.environ if env is None else env
    if env.get("KD_ACCEL_KEEP_FREED_MEMORY") == "0":
        return "KD_ACCEL_KEEP_FREED_MEMORY=0"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        if name in env:
            return name
    if "malloc" in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = env.get("LD_PRELOAD", "")
    if any(lib in preload for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return None


def keep_freed_memory(env: Mapping[str, str] | None = None) -> str:
    """Raise glibc malloc's mmap and trim thresholds once per process. Returns a line saying
    what was done (or why not)."""
    global _applied
    if _applied is not None:
        return _applied
    chosen = user_chose_allocator(env)
    if chosen:
        _applied = f"malloc: left as you set it ({chosen})"
    elif not sys.platform.startswith("linux"):
        _applied = "malloc: system default (not Linux)"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
        _applied = (f"malloc: freed blocks up to {MMAP_THRESHOLD >> 20} MB stay in the process" if ok
                    else "malloc: system default (no glibc mallopt)")
    return _applied
