"""Atomic file writes: a crash mid-write never leaves a file a later run takes as complete."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Iterator


def umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # someone else's live process (or a nonsense pid): leave it alone
    return False


def remove_leftovers(path: Path | str) -> None:
    """Delete temporaries of `path` left by earlier writers that were killed: only those made on
    this host by a process that no longer exists, so a concurrent writer keeps its own."""
    path = Path(path)
    prefix, host = f".{path.name}.", socket.gethostname()
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp") and p.is_dir()):
            continue
        parts = p.name[len(prefix):-len(".tmp")].rsplit(".", 2)  # host (may hold dots), pid, token
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and _pid_dead(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync it and rename it over `path`.

    The rename is atomic on POSIX, so readers see either the old file or the whole new one. The
    temporary lives in its own folder `.<name>.<host>.<pid>.<token>.tmp`: safetensors writes
    through a temporary of its own beside the file it is given, so that one lands in the folder
    too, and a killed writer leaves exactly one folder, which the next write of `path` removes
    (host and pid say whether its writer is gone). The file gets the mode the umask allows
    (mkstemp and safetensors create 0600, unreadable to the project's other users)."""
    path = Path(path)
    if path.is_dir():
        raise KDError(f"cannot write {path}: it is a directory (remove or rename it)")
    make_dir(path.parent)
    remove_leftovers(path)
    tmp_dir = path.parent / f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp_dir.mkdir()
    except OSError as e:
        raise KDError(f"cannot write in {path.parent}: {e.strerror or e}") from None
    tmp = tmp_dir / path.name
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:  # disk full, quota, I/O error: one line, not a traceback
        kept = f"the previous {path.name} is untouched" if path.exists() else "nothing was written"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise KDError(f"cannot write {path}: {reason}; {kept}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def make_dir(path: Path | str) -> None:
    """mkdir -p `path`, or one line naming it and the OS's reason (under a file, read-only...)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = ("it exists and is not a folder" if path.exists() else f"{blocker} is a file" if blocker
               else f"{e.strerror or e} ({e.filename})" if e.filename and Path(e.filename) != path else e.strerror or e)
        raise KDError(f"cannot create folder {path}: {why}") from None


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
