"""One run per output folder (issue 17): a run holds <run>/.kd_accel.lock, an advisory flock, from
pipeline.setup to its end, so a second script started on the same --output-dir is refused before it
moves, overwrites or deletes anything of the first.

The OS drops a flock when its process dies, even by SIGKILL, so a crashed run leaves no stale lock:
the file it leaves names a dead process and is simply taken again (--resume latest works). Only
the main process takes it: the other ranks of the same run write under rank 0's lock."""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no flock, the run goes on unguarded (see _unguarded)
    fcntl = None

from .errors import KDError

LOCK_NAME = ".kd_accel.lock"
# flock unsupported by this file system (some network or FUSE mounts): warn, do not fail the run
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
# How long a refused run waits for the holder's details: the holder writes them just after locking.
DETAILS_WAIT_S = 1.0

# lock path -> open descriptor. The lock lives exactly as long as the descriptor, so it is kept
# here (not in a local that the garbage collector could close) until release() or process exit.
_HELD = {}


def hold_run_folder(run_dir: Path | str, script: str) -> Path | None:
    """Take `run_dir`'s lock for this process, or raise KDError naming the run that holds it.
    Returns the lock file's path, or None where the file system cannot lock (a warning is printed).
    Holding it already (the same process) is not a conflict."""
    path = Path(run_dir).resolve() / LOCK_NAME
    if path in _HELD:
        return path
    if fcntl is None:
        return _unguarded(run_dir, "no flock on this platform")
    fd = _take(path, run_dir)
    if fd is None:
        return None
    _HELD[path] = fd
    details = {"script": f"{script}.py", "pid": os.getpid(), "host": socket.gethostname(),
               "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)  # the previous holder's details (a crashed run's) go
    os.pwrite(fd, (json.dumps(details) + "\n").encode(), 0)
    return path


def release() -> None:
    """Give up every lock this process holds: the file is removed (so a finished run folder holds
    only its results) while still locked, then the descriptor closed. Safe to call twice."""
    while _HELD:
        path, fd = _HELD.popitem()
        try:
            os.unlink(path)  # before close: a waiter that opened this file sees it gone (_same_file) and retries
        except OSError:
            pass
        os.close(fd)


atexit.register(release)  # a script that never reaches cli.ends_training still leaves no lock file


def _take(path, run_dir):
    """An open, flocked descriptor of `path`; None if flock is unsupported here."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's details must stay
        except OSError as e:
            raise KDError(f"cannot create the run folder's lock {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KDError(f"{run_dir} is in use by another run: {_holder(path)}; wait for it to finish, "
                          f"or use another --output-dir") from None
        except OSError as e:
            os.close(fd)
            if e.errno in UNSUPPORTED:
                _remove_if_empty(path)  # the file guards nothing here; leave the folder as it was
                return _unguarded(run_dir, e.strerror or e)
            raise KDError(f"cannot lock {path}: {e.strerror or e}") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # locked a file its holder removed on release: lock the one at `path` now


def _same_file(fd, path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(path):
    """'distill.py (pid 123 on host, started 2024-05-01T10:00:00+02:00)' from the lock file."""
    deadline = time.monotonic() + DETAILS_WAIT_S
    while True:
        try:
            d = json.loads(path.read_text())
            return f"{d['script']} (pid {d['pid']} on {d['host']}, started {d['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return f"unknown (its details in {path} are unreadable)"
            time.sleep(0.05)


def _remove_if_empty(path):
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _unguarded(run_dir, why):
    print(f"kd_accel: warning: cannot lock {run_dir} ({why}); a second run started on this folder would "
          f"not be refused", file=sys.stderr, flush=True)
    return None
