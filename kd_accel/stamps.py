"""The settings stamped on every checkpoint and finished model of a phase, derived from the
declarations in config.py (a new setting is stamped unless declared otherwise), and the checks
that refuse a resume or a reuse made under other settings."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import Accelerator

from .augment import get_spec
from .checkpointing import STAMP_VERSION, Stamp, resume_progress
from .config import stamped_fields
from .data import DataSource
from .errors import KDError
from .losses import loss_name
from .models import read_checkpoint
from .roles import resolved_recipe
from .teaching import cache_dtype, cache_views

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .config import Config, Recipe
    from .roles import TeacherId


# The groups of settings each kind of phase reads (config.py: a setting of these groups is stamped
# unless declared `unstamped`, or declared for other phases only).
PHASE_GROUPS = {"teacher": ("data", "teacher", "run"), "baseline": ("data", "student", "run"),
                "student": ("data", "student", "kd", "run"), "fitnets": ("data", "student", "kd", "run")}


def phase_kind(student: bool = True, kd: bool = False, hints: bool = False) -> str:
    return "teacher" if not student else "fitnets" if hints else "student" if kd else "baseline"


def resolved_settings(accelerator: Accelerator, cfg: Config, recipe: Recipe, train: DataSource) -> dict[str, Any]:
    """Settings whose flag value is not yet what the phase uses: resolved, so that naming a
    default (or an old loss name) is not a change, and a default that depends on other settings
    (K, the cache's dtype, the model's preprocessing) is stamped as used; --weights by content."""
    spec, views = cache_views(cfg)
    online = cfg.kd.teacher_mode == "online"
    return {"augment": get_spec(recipe.augment).describe(), "mixed_precision": accelerator.mixed_precision,
            "kd_loss": loss_name(cfg.kd.kd_loss), "views": views, "cache_dtype": None if online else cache_dtype(cfg, spec),
            **resolved_recipe(recipe, train)}


def phase_settings(accelerator: Accelerator, cfg: Config, train: DataSource, student: bool = True,
                   teacher_fp: TeacherId | str | None = None, kd: bool = False, hints: bool = False) -> Stamp:
    """The settings that shape a phase's weights and reported numbers, stamped on its checkpoints
    and its finished model file and compared on resume or reuse, so that no run continues or
    reuses another recipe's work under its own labels.

    Derived from the declarations, not listed here: every setting of the groups the phase reads
    (PHASE_GROUPS; the teacher's recipe for the teacher), by name, resolved where its flag is not
    yet the value used; plus what no flag says: the data's fingerprint, the processes and, for a
    distilled student, the teacher's weights and input (`teacher_fp`: roles.TeacherId, or the
    weights' fingerprint alone). So a new setting cannot be left out by accident."""
    phase = phase_kind(student, kd, hints)
    recipe = cfg.student if student else cfg.teacher
    resolved = resolved_settings(accelerator, cfg, recipe, train)
    s = Stamp({"stamp": STAMP_VERSION, "phase_kind": phase, "data": train.fingerprint(),
               "processes": accelerator.num_processes})
    s.explain = partial(train.explain_change, cfg.run_dir)  # a changed image folder is named by its files
    for group in PHASE_GROUPS[phase]:
        values = recipe if group in ("student", "teacher") else getattr(cfg, group)
        for name in stamped_fields(group, phase):
            s[name] = resolved.get(name, getattr(values, name))
    if phase in ("student", "fitnets"):
        s["teacher_weights"] = getattr(teacher_fp, "weights", teacher_fp)
        s["teacher_input"] = getattr(teacher_fp, "input", None)
    return s


def check_resume_target(cfg: Config, script: str, phases: Sequence[str]) -> None:
    """--resume PATH continues only the phase recorded in PATH, and only in this run's folder:
    refuse, before any work, a checkpoint of another run or of a phase this run does not have."""
    if cfg.run.resume in (None, "latest"):
        return
    path = Path(cfg.run.resume)
    progress = resume_progress(path)
    phase = progress.get("phase")
    if phase is None:
        raise KDError(f"--resume {path}: this checkpoint predates phase stamps, so which phase and settings it "
                      f"belongs to is unknown; use --resume latest, or a new --output-dir")
    own = (cfg.run_dir / "checkpoints").resolve()
    if own not in path.resolve().parents:
        raise KDError(f"--resume {path} is a checkpoint of run {progress.get('run')} (phase {phase!r}), not of this "
                      f"run ({cfg.run_dir}); give that run's folder as --output-dir")
    if phase not in phases:
        raise KDError(f"--resume {path} is a checkpoint of phase {phase!r}, which {script} does not run here "
                      f"(its phases: {', '.join(phases)})")


def model_stamp(path: Path | str, meta: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """(phase, settings) stamped in a finished model file (or its metadata, already read);
    settings None if it predates stamps."""
    meta = read_checkpoint(path)[1] if meta is None else meta
    return meta.get("phase"), json.loads(meta["settings"]) if "settings" in meta else None
