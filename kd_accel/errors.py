"""One exception type for every user-facing failure, and the wrapper that turns it into a
one-line message and a non-zero exit (no traceback wall for bad input)."""
import sys


class KDError(Exception):
    """A problem the user can fix (bad flag, missing file, stale cache). Printed as one line."""


def close_process_group():
    """Tear down torch.distributed before the interpreter exits. Left to interpreter shutdown,
    gloo's worker threads can be destroyed while still joinable, and a rank then dies with
    "terminate called without an active exception" (SIGABRT) after its work is done."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_cli(main, argv=None):
    """Run `main(argv)`; print KDError as `kd_accel: error: ...` and exit 2."""
    try:
        main(argv)
    except KDError as e:
        print(f"kd_accel: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("kd_accel: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        close_process_group()
