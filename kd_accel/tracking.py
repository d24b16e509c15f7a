"""Experiment tracking, the Accelerate way: `--report-to` picks Accelerate trackers (`log_with`),
started once per script with the resolved configuration as hyper-parameters (`init_trackers`)
and closed on every way out (`end_training`, see cli.ends_training).

Each phase (teacher, student, baseline, compare.py's variants and seeds) logs under its own
prefix with its own step count, e.g. `student/loss`, `student/soft`, `student/lr` per optimizer
step and `student/test_accuracy`, `student/epoch_time_s`, `student/samples_per_s` per epoch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from .errors import KDError, first_line

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from accelerate import Accelerator

TRACKERS = ("tensorboard", "wandb", "mlflow")
REPORT_TO = ("none", *TRACKERS, "all")
_AVAILABLE = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
INSTALL = {"tensorboard": "pip install -e '.[tensorboard]' (or pip install tensorboard)",
           "wandb": "pip install wandb", "mlflow": "pip install mlflow"}
PROJECT = "kd_accel"  # the W&B project / MLflow experiment; TensorBoard: <run>/tensorboard/<script>/kd_accel


def installed(name: str) -> bool:
    return bool(_AVAILABLE[name]())


def resolve(report_to: str | None) -> list[str]:
    """The trackers `--report-to` names: [] for 'none', every installed one for 'all'; a named
    tracker whose package is missing is a one-line KDError."""
    if report_to in (None, "none"):
        return []
    if report_to == "all":
        return [t for t in TRACKERS if installed(t)]
    if report_to not in TRACKERS:
        raise KDError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if not installed(report_to):
        raise KDError(f"--report-to {report_to} needs: {INSTALL[report_to]}")
    return [report_to]


def check_logging_dir(trackers: Sequence[str], logging_dir: Path | str) -> None:
    """Refuse, before any work, a logging folder that the trackers writing files (TensorBoard)
    could not create: a file in the way, or a folder the user cannot write in. Found only in
    init_trackers, it would stop the run after its folder exists."""
    if not any(LOGGER_TYPE_TO_CLASS[t].requires_logging_directory for t in trackers):
        return
    path = Path(logging_dir) / PROJECT  # where TensorBoard writes: <logging_dir>/<project>
    nearest = next(p for p in (path, *path.parents) if p.exists())  # "." and "/" always exist
    why = (f"{nearest} is not a folder" if not nearest.is_dir()
           else f"{nearest} is not writable" if not os.access(nearest, os.W_OK | os.X_OK) else None)
    if why:
        raise KDError(f"--report-to {','.join(trackers)}: cannot create the logging folder {path}: {why}")


def hyperparameters(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The resolved configuration as trackers take it: flat ('student.epochs'), scalars and
    strings only (None -> 'none')."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(hyperparameters(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (bool, int, float, str)) else "none" if v is None else str(v)
    return out


_OPEN = []  # the script's Accelerator, until end() closes it


def start(accelerator: Accelerator, config: Mapping[str, Any], run_name: str) -> None:
    """init_trackers once per script run (a no-op without trackers); end() ends it."""
    _OPEN.append(accelerator)
    if not accelerator.log_with:
        return
    try:
        accelerator.init_trackers(PROJECT, config=hyperparameters(config),
                                  init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})
    except Exception as e:  # a folder refused, a server unreachable: one line, not a traceback
        _abandon_trackers(accelerator)
        names = ",".join(str(t) for t in accelerator.log_with)
        raise KDError(f"--report-to {names}: cannot start the tracker: {first_line(e)}") from None


def _abandon_trackers(accelerator):
    """Finish the trackers that did start, as far as they can, and leave the Accelerator with
    none: a tracker whose start failed has nothing to finish, and end_training on it would
    raise a second error over the first."""
    for tracker in accelerator.trackers:
        try:
            tracker.finish()
        except Exception:
            pass
    accelerator.trackers.clear()


def end(after_error: bool = False) -> None:
    """accelerator.end_training() for the script's Accelerator: its trackers finish (TensorBoard
    closes its event file, W&B and MLflow end their run). cli.ends_training calls it on every way
    out; `after_error`: the script already failed, and that error is the one to report, so a
    tracker that cannot finish is passed over rather than raised over it."""
    while _OPEN:
        accelerator = _OPEN.pop()
        try:
            accelerator.end_training()
        except Exception as e:
            if not after_error:
                raise KDError(f"cannot close the trackers: {e}") from None


class PhaseLog:
    """One phase's scalars. `micro(parts)` after each forward/backward, `step(global_step, lr)`
    after each optimizer step, `flush()` at the loop's sync points, `epoch(...)` once an epoch.

    Per-step values without a host sync per step: a step's loss parts stay on the device (one
    small stack); `flush()`, called where the loop syncs anyway (every training.LOG_EVERY optimizer
    steps, before a checkpoint, at the end of an epoch), copies the pending steps to the host at
    once (averaged over processes, one collective) and logs one value per optimizer step. So
    every optimizer step is a logging point, and nothing logged is lost on a resume from a
    checkpoint. Without trackers every call returns at once."""

    def __init__(self, accelerator: Accelerator, label: str) -> None:
        self.accelerator = accelerator
        self.on = bool(accelerator.log_with)  # the same on every rank (init_trackers is rank 0's)
        self.prefix = label.replace(" ", "_") + "/"
        self.names, self.acc, self.micros, self.pending = None, None, 0, []

    def micro(self, parts: Mapping[str, torch.Tensor]) -> None:
        if not self.on:
            return
        vals = torch.stack([v.detach().float() for v in parts.values()])
        if self.names is None:
            self.names = list(parts)
        self.acc = vals if self.acc is None else self.acc + vals
        self.micros += 1

    def step(self, global_step: int, lr: float) -> None:
        """The optimizer step's loss parts (mean over its accumulation micro-steps) and the lr it used."""
        if not self.on or self.acc is None:
            return
        self.pending.append((global_step, lr, self.acc / self.micros))
        self.acc, self.micros = None, 0

    def flush(self) -> None:
        if not self.on or not self.pending:
            return
        values = torch.stack([v for _, _, v in self.pending])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, "mean")
        for (step, lr, _), row in zip(self.pending, values.tolist()):
            self.accelerator.log({**{self.prefix + n: v for n, v in zip(self.names, row)}, self.prefix + "lr": lr},
                                 step=step)
        self.pending = []

    def epoch(self, global_step: int, **values: float) -> None:
        if self.on:
            self.accelerator.log({self.prefix + k: v for k, v in values.items()}, step=global_step)
