"""The process an experiment runs in: the Accelerator every script uses, and the process-wide
settings that come with it (CPU threads, deterministic kernels, malloc's kept heap on CPU,
Accelerate's per-step overhead removed). Called once per script, before any data or model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration

from . import reporting, tracking
from .data import reads_in_workers
from .determinism import set_deterministic
from .errors import KDError
from .memory import keep_freed_memory
from .overhead import remove_overhead
from .threads import set_cpu_threads

if TYPE_CHECKING:
    from .config import Config


def make_accelerator(cfg: Config, script: str | None = None, say_threads: bool = True, **kwargs: Any) -> Accelerator:
    """The Accelerator every script uses. It owns no randomness: the data order belongs to each
    trained model's loader (data.EpochPermutation, from that model's seed and the epoch), so one
    Accelerator can train many seeds (compare.py) and each still gets its own order.
    With --report-to, it carries the trackers (log_with); TensorBoard writes under
    <run>/tensorboard/<script>/. It sets the CPU threads and prints them, unless `say_threads`
    is False (an image folder's run: load_data prints the one true line once it knows the workers)."""
    trackers = tracking.resolve(cfg.run.report_to)
    if trackers:
        logging_dir = cfg.run_dir / "tensorboard" / (script or "run")
        tracking.check_logging_dir(trackers, logging_dir)  # before the run folder exists, so nothing is left
        kwargs.update(log_with=trackers, project_config=ProjectConfiguration(
            project_dir=str(cfg.run_dir), logging_dir=str(logging_dir)))
    reporting.set_quiet(cfg.run.quiet)  # no progress bar or lines in this process (reporting.progress_bar)
    set_deterministic(cfg.run.deterministic)  # before any kernel runs (kd_accel/determinism.py)
    accelerator = Accelerator(
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.run.grad_accum,
        # non_blocking: an image folder's pinned batches (data/streamed.py) copied to the GPU
        # asynchronously, in order with the step that uses them
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False, non_blocking=True),
        dynamo_backend="inductor" if cfg.run.compile else None,
        **kwargs,
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise KDError("fp16 mixed precision needs a GPU; on CPU use --mixed-precision bf16 (or no)")
    # every physical core unless the user chose (accelerate launch's default is 1 thread); on a
    # GPU too, where the host still decodes, gathers and launches
    threads = set_cpu_threads()
    if say_threads:
        accelerator.print(threads, flush=True)
    # no page-fault storm per step (kd_accel/memory.py); same arithmetic. Not for an image folder:
    # its epochs measured no faster with it, and the kept heap grew with the epoch's length
    # (docs/performance.md), where a folder run's memory must not grow with the data
    if accelerator.device.type == "cpu" and not reads_in_workers(cfg.data.dataset):
        keep_freed_memory()
    remove_overhead()  # Accelerate's per-step package probe, gc over torch's objects (kd_accel/overhead.py)
    if cfg.run.report_to == "all":
        accelerator.print(f"--report-to all: {', '.join(trackers) or 'no tracker installed, nothing logged'}")
    return accelerator
