"""Where a script writes, checked before it does any work.

One rule for every script and every output: an output never lands on one of the run's inputs
(the data files, the teacher, a cache it reads, a checkpoint it resumes), nor deletes one (an
input inside a folder the run clears), nor lands on another of its own outputs, nor replaces an
existing file that is not that output's own kind (a PNG where a plot goes, a kd_accel cache where
a cache goes). Each script lists what it reads and writes (cli.py); `check` applies the rule.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True)
class Output:
    flag: str  # the flag that chose the path (the run folder's files: --output-dir)
    path: Path
    kind: str  # a key of KINDS


@dataclass(frozen=True)
class Input:
    flag: str  # e.g. "--teacher", "--data-dir"
    path: Path


def _metadata(path):
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file, in any of many ways
        return None


def _is_cache(path):
    meta = _metadata(path)
    return meta is not None and "format_version" in meta and "teacher_fingerprint" in meta


def _is_model(path):
    meta = _metadata(path)
    return meta is not None and "arch" in meta


def _is_json(path):
    try:
        return isinstance(json.loads(Path(path).read_text()), dict)
    except (OSError, ValueError):
        return False


def _is_lock(path):
    """A run lock: empty, or the holder's details a run left there (runlock.py)."""
    try:
        text = Path(path).read_text()
        return not text.strip() or {"script", "pid"} <= set(json.loads(text))
    except (OSError, ValueError, TypeError):
        return False


def _starts_with(path, *prefixes):
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return any(head.startswith(p) for p in prefixes)


# kind -> (what it is, in a message; does an existing path hold one?)
KINDS = {
    "cache": ("a kd_accel teacher-logits cache", _is_cache),
    "model": ("a kd_accel model file", _is_model),
    "json": ("a JSON object", _is_json),
    "results table": ("a kd_accel results table", lambda p: _starts_with(p, b"### ", b"| variant |")),
    "png": ("a PNG image", lambda p: _starts_with(p, b"\x89PNG\r\n\x1a\n")),
    "lock": ("a kd_accel run lock", _is_lock),
    "recipe": ("a kd_accel recipe file", lambda p: _starts_with(p, b"# kd_accel recipe")),  # recipes.HEADER
    "folder": ("a folder", os.path.isdir),
    # deleted and made anew by the run (<run>/previous): no input may lie inside it
    "cleared folder": ("a folder", os.path.isdir),
}


def _same(a, b):
    """Do paths a and b name one file (through links, '..', hard links)?"""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(path, folder):
    return folder.resolve() in path.resolve().parents


def check(outputs: Iterable[Output], inputs: Iterable[Input]) -> None:
    """KDError (one line) unless every output may be written: see the module's rule."""
    outputs = [o for o in outputs if o.path is not None]
    inputs = [i for i in inputs if i.path is not None]
    for n, out in enumerate(outputs):
        what = f"{out.flag} {out.path}" if out.flag != "--output-dir" else f"{out.path} (in --output-dir)"
        for i in inputs:
            if _same(out.path, i.path):
                raise KDError(f"{what} is {i.flag} {i.path}, which this run reads; refusing to write over it "
                              "(choose another path)")
            if i.path.is_dir() and _inside(out.path, i.path):  # e.g. a cache written into an image folder it lists
                raise KDError(f"{what} lies inside {i.flag} {i.path}, which this run reads; write it elsewhere")
            if out.kind == "cleared folder" and _inside(i.path, out.path):
                raise KDError(f"{i.flag} {i.path} lies in {out.path}, which this run deletes and makes anew; "
                              "move it elsewhere")
        for other in outputs[:n]:
            if _same(out.path, other.path):
                raise KDError(f"{what} is also where this run writes {other.path.name} ({other.flag}); "
                              "choose another path")
        if out.kind == "cleared folder" and out.path.is_dir():  # deleting it must lose nothing but our own files
            ours = {o.path for o in outputs}
            stray = next((p for p in sorted(out.path.iterdir()) if p not in ours), None)
            if stray is not None:
                raise KDError(f"{stray} is not a file this script writes, and {out.path} is deleted and made anew by "
                              "this run; move it elsewhere")
        desc, holds = KINDS[out.kind]
        if out.kind not in ("folder", "cleared folder") and out.path.is_dir():
            raise KDError(f"{what} is a folder; give a file's path")
        if (out.path.exists() or out.path.is_symlink()) and not holds(out.path):
            raise KDError(f"{what} exists and is not {desc}; refusing to overwrite it (remove it or choose "
                          "another path)")
