"""One exception type for every user-facing failure, and the wrapper that turns it into a
one-line message and a non-zero exit (no traceback wall for bad input)."""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# How long a rank other than 0 waits before printing its own error line (see report_error).
OTHER_RANK_DELAY_S = 3.0


class KDError(Exception):
    """A problem the user can fix (bad flag, missing file, stale cache). Printed as one line."""


def first_line(e: BaseException) -> str:
    """The first line of another library's error message, or its type when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def close_process_group() -> None:
    """Tear down torch.distributed before the interpreter exits. Left to interpreter shutdown,
    gloo's worker threads can be destroyed while still joinable, and a rank then dies with
    "terminate called without an active exception" (SIGABRT) after its work is done."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_error(message: str) -> None:
    """Print `kd_accel: error: ...` once per run, not once per process.

    Rank 0 (or a plain one-process run) prints at once. Under `accelerate launch` every rank
    usually hits the same error (same flags, same files); rank 0 prints it, exits 2, and the
    launcher stops the other ranks, so another rank waits OTHER_RANK_DELAY_S before printing. If it
    is still alive then, rank 0 did not fail first (it may be waiting for this rank), and its
    line is printed with its rank: `kd_accel: error: [rank 1] ...`."""
    rank = int(os.environ.get("RANK") or 0)
    if rank:
        time.sleep(OTHER_RANK_DELAY_S)
    print(f"kd_accel: error: {f'[rank {rank}] ' if rank else ''}{message}", file=sys.stderr, flush=True)


def lost_peer(e: BaseException) -> bool:
    """True for torch.distributed's DistBackendError (NCCL: a peer gone, a collective aborted)."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", None)
    return backend_error is not None and isinstance(e, backend_error)


def worker_message(e: BaseException) -> str:
    """A KDError's own line, also when a DataLoader worker raised it: torch re-raises it in the
    main process as KDError("Caught KDError in DataLoader worker process 0.\nOriginal Traceback
    ...\nkd_accel.errors.KDError: <the line>"), whose first line says nothing of the cause."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    prefix = f"{KDError.__module__}.{KDError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return lines[-1][len(prefix):] if lines else first_line(e)


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; print KDError as `kd_accel: error: ...` and exit 2."""
    try:
        main(argv)
    except KDError as e:
        report_error(worker_message(e))
        sys.exit(2)
    except RuntimeError as e:
        # another rank exited (its own error line is printed above): gloo says so in its
        # message, NCCL raises DistBackendError (a RuntimeError); one line, exit 1
        if "does not have a deterministic implementation" in str(e):  # --deterministic, an op without one
            report_error(f"--deterministic: {first_line(e)}")
            sys.exit(2)
        if not (lost_peer(e) or any(s in str(e) for s in ("Connection closed by peer", "Connection reset by peer"))):
            raise
        report_error("lost contact with another process, which stopped first (see its error above)")
        sys.exit(1)
    except KeyboardInterrupt:
        print("kd_accel: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        close_process_group()
