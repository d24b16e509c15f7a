"""What a person reads: progress bars, the summary table, metrics.json.

Progress is shown only on the main process: a bar on a terminal; in a log file (CI, SLURM) a plain
line every 30 seconds instead of thousands of redraws; nothing with --quiet."""
from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .deploy import add_report, fmt_flops, fmt_ms, headline
from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sized

    import torch
    from accelerate import Accelerator

    from .config import Config

# Progress inside a phase (progress_bar): a log file gets a plain line every PLAIN_EVERY_S seconds
# ($KD_ACCEL_PROGRESS_EVERY); a terminal's bar is redrawn, and the running loss read, every REFRESH_S.
PROGRESS_ENV = "KD_ACCEL_PROGRESS_EVERY"
PLAIN_EVERY_S = 30.0
REFRESH_S = 0.5
_quiet = False  # --quiet (set_quiet)


def interactive(accelerator: Accelerator) -> bool:
    """Whether this process draws a rich bar: the main process, not --quiet, stderr a terminal."""
    return accelerator.is_main_process and not _quiet and sys.stderr.isatty()


def set_quiet(quiet: bool) -> None:
    """--quiet: neither bar nor progress lines in this process (process.make_accelerator sets it,
    before any work)."""
    global _quiet
    _quiet = quiet
    if not quiet:
        progress_every()  # a bad $KD_ACCEL_PROGRESS_EVERY: one line before any work


def progress_every() -> float:
    """Seconds between two plain progress lines: $KD_ACCEL_PROGRESS_EVERY, else PLAIN_EVERY_S."""
    text = os.environ.get(PROGRESS_ENV, "").strip()
    try:
        every = float(text) if text else PLAIN_EVERY_S
    except ValueError:
        every = -1.0
    if not every >= 0:  # also NaN
        raise KDError(f"${PROGRESS_ENV} must be a number of seconds >= 0, got {text!r}")
    return every


def read_loss(loss: torch.Tensor | Callable[[], torch.Tensor]) -> float:
    """The running loss on the host: the one device sync of a progress update."""
    return float(loss() if callable(loss) else loss)


class PhaseProgress:
    """What a phase has done and how fast; `show` is called at most once per `every` seconds,
    and only then is the running loss read (read_loss: a host sync), so a step costs a
    time.monotonic() and a few additions. Call it once per batch: advance(n=1, images=B, loss=L),
    L a 0-d device tensor or a callable giving one (not called unless a display is due)."""

    def __init__(self, description: str, total: int, rows: int | None, done: int, every: float,
                 show: Callable[[PhaseProgress], None]) -> None:
        self.description, self.total, self.rows, self.every, self.show = description, total, rows, every, show
        self.done = self.done0 = done  # done0: batches a resumed epoch skipped (not in the rate)
        self.images, self.loss = 0, None  # loss: as last read
        self.start = self.last = time.monotonic()

    def __call__(self, n: int = 1, images: int = 0, loss: torch.Tensor | Callable[[], torch.Tensor] | None = None
                 ) -> None:
        self.done += n
        self.images += images
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        if loss is not None:
            self.loss = read_loss(loss)
        self.show(self)

    def status(self) -> str:
        """'6,000/10,000 rows, 2,345 img/s, loss 0.4321': what a bar adds to its batch count."""
        rate = self.images / max(self.last - self.start, 1e-9)
        return ", ".join([*([f"{self.images:,}/{self.rows:,} rows"] if self.rows is not None else []),
                          *([f"{rate:,.0f} img/s"] if self.images else []),
                          *([f"loss {self.loss:.4f}"] if self.loss is not None else [])])

    def line(self) -> str:
        """The plain line: 'teacher epoch 1/5: 120/600 batches, 2,345 img/s, loss 0.4321, ETA 0:01:02'."""
        ran = self.done - self.done0
        eta = timedelta(seconds=round((self.total - self.done) * (self.last - self.start) / ran)) if ran else "-"
        return ", ".join([f"{self.description}: {self.done:,}/{self.total:,} batches",
                          *filter(None, [self.status()]), f"ETA {eta}"])


def _print_line(progress: PhaseProgress) -> None:
    print(progress.line(), file=sys.stderr, flush=True)


def _ignore(n: int = 1, images: int = 0, loss: Any = None) -> None:
    """advance where nothing is shown (--quiet, other processes): nothing read, nothing synced."""


@contextmanager
def progress_bar(accelerator: Accelerator, description: str, total: int, done: int = 0,
                 rows: int | None = None) -> Iterator[Callable[..., None]]:
    """Yield a phase's `advance(n=1, images=0, loss=None)` (PhaseProgress) for `total` batches,
    `done` of them already (a resumed epoch), `rows` the samples to cover where that is worth
    showing (precompute). On the main process: a rich bar on a terminal; elsewhere (a log file:
    SLURM, CI) a plain line every progress_every() seconds; with --quiet, and on the other
    processes, nothing."""
    if not accelerator.is_main_process or _quiet:
        yield _ignore
        return
    if not interactive(accelerator):
        yield PhaseProgress(description, total, rows, done, progress_every(), _print_line)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True, refresh_per_second=1 / REFRESH_S) as bar:
        task = bar.add_task(description, total=total, completed=done, status="")
        yield PhaseProgress(description, total, rows, done, REFRESH_S,
                            lambda p: bar.update(task, completed=p.done, status=p.status()))


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def fmt_secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def summary_table(metrics: Mapping[str, Any]) -> Table:
    """The run's result at a glance: one row per model, then the gain and the cache status."""
    table = Table(title=f"kd_accel: {metrics['dataset']} ({metrics['run_dir']})")
    best = any("best_epoch" in (metrics.get(role) or {}) for role in ("teacher", "student", "baseline"))
    for col in ("model", "test acc", *("best epoch",) * best, "params", "train time", "note"):
        # the model's name never wraps (logs are grepped for "distilled student"); the note may
        table.add_column(col, justify="left" if col in ("model", "note") else "right", no_wrap=col != "note")
    for role in ("teacher", "student", "baseline"):
        m = metrics.get(role)
        if not m:
            continue
        name = {"student": "distilled student"}.get(role, role)
        if m.get("arch") and not m["arch"].startswith("notebook:"):  # a zoo model: say which
            name += f"\n{m['arch']}"
        table.add_row(name, fmt_pct(m["test_accuracy"]), *[fmt_best(m)] * best, f"{m['params']:,}",
                      fmt_secs(m.get("train_time_s")), m.get("note", ""))
    gain = metrics.get("gain_over_baseline")
    table.caption = (
        (f"gain over baseline: {gain:+.2f} points; " if gain is not None else "")
        + soft_targets_source(metrics["cache"])
        + ("\ntest acc: the last epoch's, the result; best epoch: the highest over epochs, picked on the test set "
           "(optimistic, as published best-epoch figures)" if best else "")
        + (f"\n{headline(metrics)}" if headline(metrics) else "")
    )
    return table


# the deployment report's table (deploy.py): its own, below the summary, so both fit 80 columns
DEPLOY_COLUMNS = ("model", "FLOPs/img", "params", "file", "ms b1", "ms b64", "speed-up")


def deployment_table(metrics: Mapping[str, Any]) -> Table | None:
    """What each model costs at inference (FLOPs per image, parameters, file size, median latency
    at batch 1 and 64, speed-up over the teacher at batch 1), measured where the run ended; None
    without a report."""
    report = metrics.get("deployment")
    if not report:
        return None
    m = report["machine"]
    table = Table(title=f"deployment: {m['device']}, {m['cpu']} ({'/'.join(m['cpu_flags']) or 'no AVX'}), "
                        f"{m['threads']} threads, fp32")
    for col in DEPLOY_COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    teacher = (metrics.get("teacher") or {}).get("deployment")
    for role in ("teacher", "student", "baseline"):
        cost = (metrics.get(role) or {}).get("deployment")
        if cost:
            table.add_row(role, fmt_flops(cost["flops"]),
                          f"{cost['params']:,}", f"{cost['file_bytes'] / 1e6:.2f} MB", fmt_ms(cost, 1), fmt_ms(cost, 64),
                          fmt_speedup(teacher, cost))
    table.caption = ("ms b1 / b64: median latency of a batch of 1 / 64 images; speed-up: the teacher's at batch 1 "
                     "over the model's" if report["budget_s"] else
                     f"latency not measured: {report.get('latency_skipped') or '$KD_ACCEL_LATENCY_S=0'}")
    return table


def fmt_speedup(teacher: Mapping[str, Any] | None, cost: Mapping[str, Any]) -> str:
    """The teacher's median latency at batch 1 over the model's, '-' where either is missing."""
    if not teacher or not teacher.get("latency") or not cost.get("latency"):
        return "-"
    return f"{teacher['latency']['batch_1']['median_ms'] / cost['latency']['batch_1']['median_ms']:.1f}x"


def fmt_best(m: Mapping[str, Any]) -> str:
    return f"{m['best_test_accuracy']:.2f}% (epoch {m['best_epoch']})" if "best_epoch" in m else "-"


def epoch_accuracies(info: Mapping[str, Any]) -> dict[str, Any]:
    """What metrics.json adds to a model's `test_accuracy` (the last epoch's: the headline, as
    every table and claim here): `last_epoch`, and the best epoch's accuracy and number (the first
    of equals). {} for a model with no per-epoch history (a teacher reused from its file). A
    best-epoch figure picks the epoch on the test set: optimistic, yet several published numbers
    are of that kind, so both are kept."""
    scored = [e for e in info.get("epochs") or () if "test_accuracy" in e]
    if not scored:
        return {}
    best = max(scored, key=lambda e: e["test_accuracy"])  # max keeps the first of equals
    return {"last_epoch": scored[-1]["epoch"], "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"]}


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
        deployment = deployment_table(metrics)
        if deployment is not None:
            Console().print(deployment)


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
    metrics = {
        "dataset": cfg.data.dataset,
        "run_dir": str(cfg.run_dir),
        "num_train": len(train),
        "num_test": len(test),
        "teacher": {**teacher, **epoch_accuracies(teacher)},
        "student": {**student, **epoch_accuracies(student), "note": note},
        "baseline": baseline and {**baseline, **epoch_accuracies(baseline),
                                  "note": "hard labels only" + (f", augment {aug}" if aug != "none" else "")},
        "gain_over_baseline": baseline and student["test_accuracy"] - baseline["test_accuracy"],
        "cache": cache,
        "environment": {
            "kd_accel": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "processes": accelerator.num_processes, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
        },
    }
    if accelerator.is_main_process:  # measured once, by the process that writes metrics.json
        add_report(metrics, {"teacher": teacher.get("path"), "student": cfg.run_dir / "student.safetensors",
                             "baseline": baseline and cfg.run_dir / "baseline.safetensors"}, accelerator.device,
                   earlier=[cfg.run_dir / "metrics.json", cfg.run_dir / "previous" / "metrics.json"])
    return metrics
