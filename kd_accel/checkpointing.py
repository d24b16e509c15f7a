"""Resumable training state: accelerator.save_state folders written atomically.

A checkpoint is `<run>/checkpoints/<phase>/step_<global step>/`: Accelerate's state (model,
optimizer, scheduler, RNG of every rank) plus `progress.json` (epoch, position in the epoch,
history). It is written under a temporary name and renamed when complete, so a crash while
saving leaves only a `.tmp_*` folder, which is never taken for a checkpoint.
"""
import json
import os
import re
import shutil
from pathlib import Path

from .errors import KDError

PROGRESS = "progress.json"
_STEP = re.compile(r"^step_(\d+)$")


def parse_every(value):
    """--checkpoint-every: None, 'epoch' or a positive number of optimizer steps."""
    if value in (None, "", "none"):
        return None
    if value == "epoch":
        return "epoch"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise KDError(f"--checkpoint-every must be 'epoch' or a positive number of steps, got {value!r}")
    return n


def complete_checkpoints(folder):
    """Complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP.match(p.name)) and (p / PROGRESS).is_file()]
    return [p for _, p in sorted(found)]


def find_resume(resume, folder):
    """The checkpoint to resume from: 'latest' in `folder` (None if there is none) or a path."""
    if not resume:
        return None
    if resume == "latest":
        done = complete_checkpoints(folder)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / PROGRESS).is_file():
        raise KDError(f"--resume {resume}: not a complete checkpoint (no {PROGRESS})")
    return path


def save_checkpoint(accelerator, folder, global_step, progress, keep):
    """All ranks call this (save_state writes each rank's RNG state); rank 0 renames and prunes."""
    folder = Path(folder)
    final = folder / f"step_{global_step:08d}"
    tmp = folder / f".tmp_step_{global_step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / PROGRESS, "w") as f:
            json.dump(progress, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)  # the checkpoint exists only once it is whole
        for old in complete_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path):
    """Restore Accelerate's state from `path`; return its progress dict."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / PROGRESS).read_text())
