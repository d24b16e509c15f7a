"""CPU threads per process: every physical core, shared among the local processes, unless the
user chose a number.

`accelerate launch` without a config starts a single CPU process with OMP_NUM_THREADS=1 (its
default for --num_cpu_threads_per_process), so a laptop with 8 cores would train on one of
them. A 1 that the launcher wrote is told apart from a 1 the user asked for by looking at the
launcher itself (its command line and the environment it was started with): an explicit
OMP_NUM_THREADS or --num_cpu_threads_per_process is always respected.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

LAUNCHER_FLAG = "--num_cpu_threads_per_process"


def physical_cores() -> int:
    """Physical cores this process may run on (affinity respected); logical ones if unknown."""
    try:
        import psutil  # a dependency of accelerate

        cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(cores, 1)


def _read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
    except OSError:
        return None


def launcher_chose_one(env: Mapping[str, str] | None = None, parent_argv: Sequence[str] | None = None,
                       parent_env: Sequence[str] | None = None) -> bool:
    """True when OMP_NUM_THREADS=1 was set by `accelerate launch`'s default, not by the user:
    this process was started by accelerate, and its launcher neither had OMP_NUM_THREADS in its
    own environment nor got --num_cpu_threads_per_process on its command line."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS") != "1" or "ACCELERATE_MIXED_PRECISION" not in env:
        return False
    if parent_argv is None or parent_env is None:
        # torchrun's agent (multi-process) or accelerate itself (one process) is the parent
        ppid = os.getppid()
        parent_argv, parent_env = _read_proc(ppid, "cmdline"), _read_proc(ppid, "environ")
        if parent_argv is None or parent_env is None:
            return False  # can't tell (not Linux): respect the 1
    if not any("accelerate" in a for a in parent_argv):
        return False
    if any(a == LAUNCHER_FLAG or a.startswith(LAUNCHER_FLAG + "=") for a in parent_argv):
        return False
    return not any(e.startswith("OMP_NUM_THREADS=") for e in parent_env)


def choose_threads(env: Mapping[str, str] | None = None, cores: int | None = None, local_processes: int | None = None,
                   launcher_default: bool | None = None) -> tuple[int | None, str]:
    """(threads, why) for this process, or (None, why) to leave torch's setting alone."""
    env = os.environ if env is None else env
    cores = physical_cores() if cores is None else cores
    local = local_processes or int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    launcher_default = launcher_chose_one(env) if launcher_default is None else launcher_default
    if "OMP_NUM_THREADS" in env and not launcher_default:
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} (chosen by you)"
    n = max(cores // max(local, 1), 1)
    return n, f"{n} per process ({cores} physical cores / {local} local process{'es' * (local > 1)})"


def threads_line(env: Mapping[str, str] | None = None) -> str:
    """The line saying choose_threads's choice and why (what set_cpu_threads applies)."""
    _, why = choose_threads(env)
    return f"cpu threads: {why}; set OMP_NUM_THREADS or accelerate launch {LAUNCHER_FLAG} N to choose"


def set_cpu_threads(env: Mapping[str, str] | None = None) -> str:
    """Apply choose_threads (for CPU runs); returns the line to print once (threads_line)."""
    n, _ = choose_threads(env)
    if n is not None:
        torch.set_num_threads(n)
    return threads_line(env)


def share_with_workers(workers: int, env: Mapping[str, str] | None = None) -> str | None:
    """On a CPU run reading an image folder: this process's threads less the `workers` DataLoader
    workers that decode beside it, at least 1 (4 busy threads on 2 cores ran a folder epoch 3.7x
    slower than 1 + 2: docs/performance.md); a number the user chose is kept. Returns the line
    to print, or None when nothing changed."""
    n, _ = choose_threads(env)
    if n is None or not workers:
        return None
    threads = max(1, n - workers)
    torch.set_num_threads(threads)
    return (f"cpu threads: {threads} per process beside {workers} DataLoader workers decoding images "
            f"(set OMP_NUM_THREADS or --num-workers to choose)")

