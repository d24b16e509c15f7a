"""Resumable training state: accelerator.save_state folders written atomically.

A checkpoint is `<run>/checkpoints/<phase>/step_<global step>/`: Accelerate's state (model,
optimizer, scheduler, RNG of every rank) plus `progress.json` (epoch, position in the epoch,
history) and the stamp of the phase that wrote it: its label, its run and the settings that shape
its math (`stamp` below). It is written under a temporary name and renamed when complete, so a
crash while saving leaves only a `.tmp_*` folder, which is never taken for a checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from pickle import UnpicklingError
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from .errors import KDError
from .losses import loss_name
from .validate import nonfinite, reads_tensors

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from accelerate import Accelerator

PROGRESS = "progress.json"
_STEP = re.compile(r"^step_(\d+)$")
PROGRESS_KEYS = ("epoch", "position", "global_step", "history", "elapsed_s", "sums")
RESUME_HINT = "rerun with the old values or use a new --output-dir"
# Version of the settings stamp (pipeline.phase_settings). Stamps before 2 left settings out
# (e.g. --augment-seed with one view), so what they were made with is not fully known.
STAMP_VERSION = 3  # 3: the models (arch, weights, preprocessing) and the teacher's input


def parse_every(value: str | int | None) -> str | int | None:
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


def complete_checkpoints(folder: Path | str) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP.match(p.name)) and (p / PROGRESS).is_file()]
    return [p for _, p in sorted(found)]


def read_progress(path: Path | str) -> dict[str, Any]:
    """progress.json of checkpoint `path` as a dict; KDError if it is missing or unreadable."""
    try:
        progress = json.loads((Path(path) / PROGRESS).read_text())
    except (OSError, ValueError) as e:
        raise KDError(f"{PROGRESS} unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(progress, dict):
        raise KDError(f"{PROGRESS} is not a JSON object")
    if not all(k in progress for k in PROGRESS_KEYS):
        raise KDError(f"{PROGRESS} lacks {', '.join(k for k in PROGRESS_KEYS if k not in progress)}")
    return progress


def find_resume(resume: Path | str | None, folder: Path | str, phase: str | None = None) -> Path | None:
    """The checkpoint `phase` resumes from: --resume PATH if PATH is that phase's, else the newest
    complete one in `folder` (None if there is none), as with 'latest'. A PATH of another phase
    (checked at start-up, pipeline.check_resume_target) may even be gone by then, pruned by its
    own phase."""
    if not resume:
        return None
    if resume != "latest":
        try:
            if read_progress(resume).get("phase") == phase:
                return Path(resume)
        except KDError:
            pass  # unreadable now, yet checked at start-up: another phase's, since pruned
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def resume_progress(path: Path | str) -> dict[str, Any]:
    """progress.json of --resume PATH, or one line saying why it is not a usable checkpoint; for
    checking PATH's phase and run before any work."""
    try:
        return read_progress(path)
    except KDError as e:
        raise KDError(f"--resume {path}: not a usable checkpoint: {e}") from None


@reads_tensors("accelerate checkpoint")
def checkpoint_problem(path: Path | str) -> str | None:
    """Why checkpoint `path` cannot be resumed, or None. Checked before `load_state`, which would
    fail half-way (weights loaded, optimizer not) on a truncated file, or only log a warning on a
    missing RNG file and so silently break bit-exact resumption. Every tensor `load_state` takes
    (the model's parameters and buffers, the optimizer's state) must be finite: fit never saves
    non-finite weights, so such a checkpoint was damaged since."""
    path = Path(path)
    try:
        progress = read_progress(path)
    except KDError as e:
        return str(e)
    names = [f.name for f in path.iterdir()]
    for prefix in ("model", "optimizer", "scheduler"):
        if not any(n.startswith(prefix) for n in names):
            return f"no {prefix}* file"
    for rank in range(int((progress.get("settings") or {}).get("processes", 1))):  # every rank's RNG
        if f"random_states_{rank}.pkl" not in names:
            return f"no random_states_{rank}.pkl"
    for f in sorted(path.iterdir()):
        bad = None
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    bad = nonfinite({key: st.get_tensor(key) for key in st.keys()})
            elif f.suffix in (".bin", ".pkl"):  # torch.save zip archives: testzip checks every CRC
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is not None:
                        raise zipfile.BadZipFile("bad CRC")
                if f.name.startswith(("model", "optimizer")):  # weights (torch.save), the optimizer's moments
                    import torch

                    bad = nonfinite(torch.load(f, map_location="cpu", weights_only=True))
        except (SafetensorError, OSError, ValueError, RuntimeError, EOFError, UnpicklingError, zipfile.BadZipFile) as e:
            return f"{f.name} truncated or unreadable ({type(e).__name__}: {e})"
        if bad:
            return f"{f.name}: {bad}; refusing to use it"
    return None


class Stamp(dict):
    """A phase's settings (pipeline.phase_settings), and how to explain a change of its data:
    explain(old data fingerprint) -> one line naming what changed (an image folder's first
    differing file), or None."""

    explain = None


def check_stamp(what: str, stamp: Mapping[str, Any] | None, settings: Mapping[str, Any], hint: str,
                explain: Callable[[str | None], str | None] | None = None) -> None:
    """Refuse to continue or reuse `what` unless its stamped settings are this run's: name each
    changed setting, old -> new. `stamp` None: made before stamps existed, settings unknown.
    A changed "data" is explained where the settings know how (Stamp.explain)."""
    explain = explain or getattr(settings, "explain", None)
    if stamp is None:
        raise KDError(f"{what} predates settings stamps, so the settings it was made with are unknown; {hint}")
    if stamp.get("stamp") != settings.get("stamp"):
        raise KDError(f"{what} was stamped by an older kd_accel whose stamps left some settings out, so the "
                      f"settings it was made with are not fully known; {hint}")
    if stamp.get("kd_loss"):  # stamped under an old name ('seed-mse'): the same loss, not a change
        stamp = {**stamp, "kd_loss": loss_name(stamp["kd_loss"])}
    changed = [f"{k} {stamp.get(k)} -> {settings.get(k)}" for k in {**stamp, **settings}
               if stamp.get(k) != settings.get(k)]
    why = explain and stamp.get("data") != settings.get("data") and explain(stamp.get("data"))
    if why:
        changed.append(f"the image folder changed: {why}")
    if changed:
        raise KDError(f"{what} was made with other settings: {', '.join(changed)}; {hint}")


def clear_checkpoints(folder: Path | str) -> int:
    """A phase that starts afresh removes its folder's old checkpoints (complete or not): left
    there, a later `--resume latest` would take the newest step of the earlier run instead of
    this one's. Returns how many were removed."""
    folder = Path(folder)
    old = [p for p in folder.iterdir() if _STEP.match(p.name) or p.name.startswith(".tmp_step_")] \
        if folder.is_dir() else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return len(old)


def save_checkpoint(accelerator: Accelerator, folder: Path | str, global_step: int, progress: Mapping[str, Any],
                    keep: int) -> Path:
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


@reads_tensors("accelerate checkpoint")
def load_checkpoint(accelerator: Accelerator, path: Path | str, phase: str, settings: Mapping[str, Any],
                    log: Callable[..., None] = print) -> tuple[Path, dict[str, Any]]:
    """Restore Accelerate's state from `path`, or, if it is damaged, from the newest usable older
    checkpoint beside it (saying which was skipped and why). Its stamp must be `phase` with
    `settings`. Returns (path used, progress dict)."""
    path = Path(path)
    older = [p for p in reversed(complete_checkpoints(path.parent)) if _step(p) < _step(path)]
    problems = []
    for candidate in [path, *older]:
        problem = checkpoint_problem(candidate)
        if problem:
            problems.append(f"{candidate.name}: {problem}")
            log(f"{phase}: skipping checkpoint {candidate}: {problem}", flush=True)
            continue
        progress = read_progress(candidate)
        if progress.get("phase") not in (None, phase):  # None: unstamped, refused by check_stamp
            raise KDError(f"{phase}: checkpoint {candidate} belongs to phase {progress['phase']!r}")
        check_stamp(f"{phase}: checkpoint {candidate}", progress.get("settings"), settings, RESUME_HINT)
        accelerator.load_state(str(candidate))
        return candidate, progress
    raise KDError(f"{phase}: no usable checkpoint in {path.parent} ({'; '.join(problems)}); "
                  f"delete {path.parent} to redo the phase from its start, or use a new --output-dir")


def _step(path):
    m = _STEP.match(Path(path).name)
    return int(m.group(1)) if m else -1


class Checkpointer:
    """A training phase's checkpoints and resume policy, for training.fit: where they go
    (`folder`), how often (`every`: N optimizer steps, "epoch", or None), how many are kept, and
    whether to resume (`resume`: None, "latest" or a checkpoint path); every checkpoint carries
    `settings` (stamps.phase_settings), which a resumed one must match."""

    def __init__(self, folder: Path | str, every: str | int | None = None, keep: int = 1, resume: str | None = None,
                 settings: Mapping[str, Any] | None = None, run_dir: Path | str | None = None):
        self.folder, self.every, self.keep, self.resume = Path(folder), parse_every(every), keep, resume
        self.settings, self.run_dir = settings, run_dir

    @classmethod
    def of(cls, run: Any, folder: Path | str, settings: Mapping[str, Any] | None = None) -> Checkpointer:
        """From the run's settings (config.Run: --checkpoint-every, --keep-checkpoints, --resume)."""
        return cls(folder, run.checkpoint_every, run.keep_checkpoints, run.resume, settings, run.run_dir)

    def restore(self, accelerator: Accelerator, label: str) -> tuple[Path, dict[str, Any]] | None:
        """(checkpoint, progress) restored into the prepared objects when this phase resumes;
        otherwise None, the phase's old checkpoints removed (a later --resume latest must not
        take an earlier run's newer step)."""
        found = find_resume(self.resume, self.folder, label)
        if found:
            return load_checkpoint(accelerator, found, label, self.settings, accelerator.print)
        if accelerator.is_main_process and (n := clear_checkpoints(self.folder)):
            accelerator.print(f"{label}: starting afresh; removed {n} old checkpoint(s) in {self.folder}", flush=True)
        return None

    def due_at_step(self, global_step: int, position: int, batches: int) -> bool:
        """Every N steps, except at the end of an epoch (the epoch's own checkpoint is taken then)."""
        return isinstance(self.every, int) and global_step % self.every == 0 and position < batches

    def due_at_epoch_end(self, epoch: int, epochs: int) -> bool:
        """After every epoch but the last (the finished model is saved then), when checkpointing."""
        return bool(self.every) and epoch + 1 < epochs

    def save(self, accelerator: Accelerator, global_step: int, progress: Mapping[str, Any]) -> Path:
        stamped = {"phase": progress["phase"], "run": str(self.run_dir), "settings": self.settings, **progress}
        return save_checkpoint(accelerator, self.folder, global_step, stamped, self.keep)
