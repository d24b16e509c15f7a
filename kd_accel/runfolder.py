"""A run's folder: made and held (one run at a time), its configuration written when the work is
done, and a finished result set aside before a new run starts in it."""
from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from . import tracking
from .data import reads_in_workers
from .io import make_dir, write_json
from .process import make_accelerator
from .runlock import hold_run_folder

if TYPE_CHECKING:
    from .config import Config


TEACHER_FILE = "teacher.safetensors"


def setup(cfg: Config, script: str, run_folder: bool = True) -> Accelerator:
    """Accelerator, seed and run folder. The configuration is written by `write_config` once the
    script's work is done: written here, a failed run would leave a finished run's results
    beside a config.json that did not make them. `run_folder` False (precompute_logits.py --out
    alone, which names the one file to write): no run folder is made or locked.
    Call load_data next: an image folder's run prints its CPU threads there."""
    accelerator = make_accelerator(cfg, script, say_threads=not reads_in_workers(cfg.data.dataset))
    set_seed(cfg.run.seed)
    if accelerator.is_main_process and run_folder:
        make_dir(cfg.run_dir)
        # before anything is written or removed here; the other ranks write under rank 0's lock.
        # Refused, rank 0 exits 2 and the launcher stops the others (waiting in the next barrier).
        hold_run_folder(cfg.run_dir, script)
    # trackers get the resolved configuration (what config.json will say) as hyper-parameters
    tracking.start(accelerator, resolved_config(accelerator, cfg, script), f"{cfg.run_dir.name}-{script}")
    return accelerator


def resolved_config(accelerator: Accelerator, cfg: Config, script: str) -> dict[str, Any]:
    return {**cfg.to_json(), "script": script, "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision}


def write_config(accelerator: Accelerator, cfg: Config, script: str) -> None:
    """config.json (distill.py) or config.<script>.json beside the outputs it describes; call it
    when they are written, before metrics.json (main process only)."""
    if accelerator.is_main_process:
        write_json(cfg.run_dir / f"config.{script}.json" if script != "distill" else cfg.run_dir / "config.json",
                   resolved_config(accelerator, cfg, script))


RESULT_FILES = ("metrics.json", "config.json", "student.safetensors", "baseline.safetensors", "recipe.yaml")
EXPORT_DIR = "export"  # distill.py --export's files: set aside with the result they were made from


def set_aside_previous_result(accelerator: Accelerator, cfg: Config) -> None:
    """distill.py, started afresh in a folder holding a finished result: move that result
    (metrics.json first, then the files it describes) into <run>/previous/, so a run that fails
    half-way never leaves new weights beside old metrics, and the last good result is kept.
    The teacher and the cache stay: they are stamped and checked on reuse."""
    if cfg.run.resume:
        return
    # Every process looks before the main one moves anything: a process that looked after the move
    # would skip the barrier below while the others wait in it (a 2-process re-run hung so).
    finished = (cfg.run_dir / "metrics.json").exists()
    accelerator.wait_for_everyone()
    if not finished:
        return
    if accelerator.is_main_process:
        previous = cfg.run_dir / "previous"
        shutil.rmtree(previous, ignore_errors=True)
        make_dir(previous)
        for name in (*RESULT_FILES, EXPORT_DIR):
            if (cfg.run_dir / name).exists():
                os.replace(cfg.run_dir / name, previous / name)
        accelerator.print(f"previous result moved to {previous} (a new run starts here; --resume latest continues one)")
    accelerator.wait_for_everyone()
