"""What a person reads: progress bars, the summary table, metrics.json.

Progress bars are drawn only on the main process and only on a terminal; in a log file (CI,
SLURM) each epoch is one plain line instead of thousands of redraws."""
from __future__ import annotations

import platform
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sized

    from accelerate import Accelerator

    from .config import Config


def interactive(accelerator: Accelerator) -> bool:
    return accelerator.is_main_process and sys.stderr.isatty()


@contextmanager
def progress_bar(accelerator: Accelerator, description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield an `advance(n=1)` callable backed by a rich bar (or a no-op when not interactive)."""
    if not interactive(accelerator):
        yield lambda n=1: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def fmt_secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def summary_table(metrics: Mapping[str, Any]) -> Table:
    """The run's result at a glance: one row per model, then the gain and the cache status."""
    table = Table(title=f"kd_accel: {metrics['dataset']} ({metrics['run_dir']})")
    for col in ("model", "test acc", "params", "train time", "note"):
        table.add_column(col, justify="left" if col in ("model", "note") else "right")
    for role in ("teacher", "student", "baseline"):
        m = metrics.get(role)
        if not m:
            continue
        name = {"student": "distilled student"}.get(role, role)
        if m.get("arch") and not m["arch"].startswith("notebook:"):  # a zoo model: say which
            name += f"\n{m['arch']}"
        table.add_row(name, fmt_pct(m["test_accuracy"]), f"{m['params']:,}", fmt_secs(m.get("train_time_s")), m.get("note", ""))
    gain = metrics.get("gain_over_baseline")
    table.caption = (
        (f"gain over baseline: {gain:+.2f} points; " if gain is not None else "")
        + soft_targets_source(metrics["cache"])
    )
    return table


def soft_targets_source(cache: Mapping[str, Any]) -> str:
    """The caption's word on where the soft targets came from. A mode that reads no cache (online:
    the teacher on every batch) records only its name (teaching.resolve_soft_targets), so there
    is no hit or path to show."""
    if "hit" not in cache:
        return f"teacher: {cache['mode']}, no cache"
    return f"teacher logits cache: {'hit' if cache['hit'] else 'miss'} ({cache['path']})"


def print_summary(accelerator: Accelerator, metrics: Mapping[str, Any]) -> None:
    if accelerator.is_main_process:
        Console().print(summary_table(metrics))


def experiment_metrics(accelerator: Accelerator, cfg: Config, train: Sized, test: Sized, teacher: dict[str, Any],
                       student: dict[str, Any], baseline: dict[str, Any] | None,
                       cache: dict[str, Any]) -> dict[str, Any]:
    """metrics.json of distill.py: each model's result, the gain over the baseline, where the soft
    targets came from, and the software and processes that produced them."""
    import torch

    from . import __version__

    k, aug = cfg.kd, cfg.student.augment
    note = f"{k.kd_loss} T={k.temperature:g} alpha={k.alpha:g}" + (
        f", augment {aug}, teacher {k.teacher_mode}" if aug != "none" else "")
    return {
        "dataset": cfg.data.dataset,
        "run_dir": str(cfg.run_dir),
        "num_train": len(train),
        "num_test": len(test),
        "teacher": teacher,
        "student": {**student, "note": note},
        "baseline": baseline and {**baseline, "note": "hard labels only" + (f", augment {aug}" if aug != "none" else "")},
        "gain_over_baseline": baseline and student["test_accuracy"] - baseline["test_accuracy"],
        "cache": cache,
        "environment": {
            "kd_accel": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "processes": accelerator.num_processes, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
        },
    }
