"""Where a student's targets come from: one small interface (SoftTargetSource), chosen once per
student phase (`source_of`), and nothing below asks which kind it holds.

- HardLabels: the baseline; no teacher.
- CachedTeacherViews: a K-view cache of an augmented teacher (teacher mode `cache`): in epoch e the
  student replays view e mod K, the very view the teacher saw (its parameters or crops), with
  the teacher's logits on it.
- FixedView: one stored view's logits (a cache of the un-augmented images: teacher mode `fixed`,
  or `cache` without augmentation; or logits given as a tensor): the student sees its own views,
  the teacher's logits stay those of the one view.
- OnlineTeacher: the frozen teacher run on the student's own view of every step (Beyer et al.
  2022); no cache.

Each answers the three questions a student phase asks: which views the student sees (a
data.ViewPlan, epoch by epoch), which columns ride along with its samples, and the objective of
a batch (the distillation loss, fed the teacher's logits its own way: gathered, rebuilt from
top-k, or computed online).

From a top-k cache each loss gets the teacher's row rebuilt from the stored columns (TOPK_REBUILDS):
the top k with the rest of the mass spread evenly (hinton and notebook-mse: the earlier runs'
rows, bit for bit; dist, whose errors this keeps lowest at its published T = 1), or logits (dkd
and --logit-standardization: the top k's and the label's exactly, the others at their mean; the
stored std for the z-score), which the errors measured in docs/cache.md favour at T > 1. A cache
without the columns a loss needs is refused by name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from .augment import AugmentSpec, CachedViews, DrawnViews
from .cache import TOPK_STATS, CacheMismatch, SoftTargets, topk_logit_estimate, topk_logits
from .losses import loss_name
from .training import make_objective, online_objective

if TYPE_CHECKING:
    from collections.abc import Collection

    from .data import ViewPlan

Objective = Callable[[torch.Tensor, dict], dict]


def _logit_estimate(batch: dict, num_classes: int) -> torch.Tensor:
    return topk_logit_estimate(batch, num_classes, batch["labels"], batch.get("label_mask"))


# How a top-k cache's row is rebuilt for a loss: (the columns it reads besides the top k,
# (batch, C) -> the teacher's [B, C] row: log-probabilities, or logits). A standardising loss
# reads "teacher_std" too (losses.batch_inputs).
TOPK_REBUILDS = {
    "mass": ((), topk_logits),
    "logits": (("teacher_target_logp", "teacher_lse", "teacher_mean"), _logit_estimate),
}


def checked_rebuild(have: Collection[str], kind: str, standardize: bool, path: Any) -> str:
    """The TOPK_REBUILDS entry loss `kind` needs (dkd, --logit-standardization: logits); a
    top-k cache whose columns (`have`) lack what it reads (an older cache, written before
    them) is refused in one line naming the loss and the first missing column."""
    rebuild = "logits" if standardize or loss_name(kind) == "dkd" else "mass"
    needs = (*TOPK_REBUILDS[rebuild][0], *(("teacher_std",) if standardize else ()))
    missing = [col for col in needs if col not in have]
    if missing:
        what = next(desc for col, desc in TOPK_STATS.values() if col == missing[0])
        loss = f"--kd-loss {loss_name(kind)}" + (" --logit-standardization" if standardize else "")
        raise CacheMismatch(f"{loss} from the top-k cache {path} needs {what} ({missing[0]}), which it lacks (written "
                            "before kd_accel stored it): precompute it again, or give another --logits")
    return rebuild


def check_serves(soft: SoftTargets, kd: Any) -> None:
    """A top-k cache `soft` holds what `kd`'s loss (config.Distillation) rebuilds its teacher
    row from (checked_rebuild); any full cache does."""
    if soft.topk:
        checked_rebuild(soft.stats, kd.kd_loss, bool(getattr(kd, "logit_standardization", False)), soft.path)


def topk_objective(num_classes: int, objective: Objective, rebuild: str = "mass") -> Objective:
    """Soft targets from a top-k cache: the batch's stored top-k columns [B, k] rebuilt to
    [B, num_classes] as TOPK_REBUILDS[rebuild] says (mass: cache.topk_logits, row by row: the
    rows the whole-cache expansion would give, bit for bit) just before the loss, so only [N, k]
    lives in memory."""
    rows = TOPK_REBUILDS[rebuild][1]

    def run(logits: torch.Tensor, batch: dict) -> dict:
        batch["teacher_logits"] = rows(batch, num_classes)
        return objective(logits, batch)

    return run


def own_views(spec: AugmentSpec, stream: int) -> ViewPlan | None:
    """A fresh view per epoch from the phase's own stream; None when the phase neither augments
    nor mixes."""
    return DrawnViews(spec, stream) if spec.varies else None


class SoftTargetSource(Protocol):
    """What a student phase asks of where its targets come from."""

    distilled: bool  # False for the baseline: hard labels only

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        """The views the student trains on (its own drawn from `stream`, or the teacher's)."""
        ...

    def columns(self) -> dict[str, torch.Tensor]:
        """Columns [N, ...] gathered with each batch by sample index (fixed teacher logits)."""
        ...

    def feed(self, objective: Objective, kind: str = "hinton", standardize: bool = False) -> Objective:
        """`objective` (which reads batch["teacher_logits"]), the loss `kind` (standardising its
        logits or not), given the teacher's logits this source's way: gathered (as they are),
        rebuilt from top-k as that loss needs (checked_rebuild), or computed by the teacher on the
        batch."""
        ...

    def objective(self, kind: str, temperature: float, alpha: float, label_smoothing: float = 0.0,
                  **settings: Any) -> Objective:
        """The loss of a batch: hard labels (smoothed by label_smoothing), or the distillation
        loss `kind` at T and alpha with its own settings (losses.loss_settings)."""
        ...


class _Source:
    distilled = True

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        return own_views(spec, stream)  # the student's own views (with --augment, not the teacher's)

    def columns(self) -> dict[str, torch.Tensor]:
        return {}

    def feed(self, objective: Objective, kind: str = "hinton", standardize: bool = False) -> Objective:
        return objective

    def objective(self, kind: str, temperature: float, alpha: float, label_smoothing: float = 0.0,
                  **settings: Any) -> Objective:
        if not self.distilled:
            return make_objective("ce", label_smoothing=label_smoothing)
        standardize = bool(settings.get("logit_standardization"))
        return self.feed(make_objective(kind, temperature, alpha, label_smoothing, **settings), kind, standardize)


class HardLabels(_Source):
    distilled = False


class CachedTeacherViews(_Source):
    """View e mod K of a K-view cache (K: the run's, at most the file's)."""

    def __init__(self, soft: SoftTargets, views: int):
        self.soft, self.views = soft, views

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        return CachedViews(self.soft, self.views)  # the teacher's own views, not the student's stream

    def feed(self, objective: Objective, kind: str = "hinton", standardize: bool = False) -> Objective:
        if not self.soft.topk:
            return objective
        return topk_objective(self.soft.num_classes, objective,
                              checked_rebuild(self.soft.stats, kind, standardize, self.soft.path))


class FixedView(_Source):
    """One view's teacher logits (a cache's view 0, or [N, C] given), whatever view the student sees."""

    def __init__(self, columns: dict[str, torch.Tensor], topk_classes: int | None = None, path: Any = None):
        self._columns, self.topk_classes, self.path = columns, topk_classes, path

    @classmethod
    def of(cls, soft: SoftTargets | torch.Tensor) -> FixedView:
        if isinstance(soft, SoftTargets):
            return cls(soft.columns(0), soft.num_classes if soft.topk else None, soft.path)
        return cls({"teacher_logits": soft})

    def columns(self) -> dict[str, torch.Tensor]:
        return self._columns

    def feed(self, objective: Objective, kind: str = "hinton", standardize: bool = False) -> Objective:
        if not self.topk_classes:
            return objective
        rebuild = checked_rebuild(self._columns, kind, standardize, self.path)
        return topk_objective(self.topk_classes, objective, rebuild)


class OnlineTeacher(_Source):
    """The frozen teacher (teaching.frozen_teacher: eval mode, never DDP-wrapped) run on every
    batch: on the student's input, or on `inputs(batch)`, the same view made the teacher's way
    when it expects another size or normalisation (pipeline.online_view)."""

    def __init__(self, teacher: torch.nn.Module, inputs: Callable[[dict], torch.Tensor] | None = None):
        self.teacher, self.inputs = teacher, inputs

    def feed(self, objective: Objective, kind: str = "hinton", standardize: bool = False) -> Objective:
        return online_objective(self.teacher, objective, self.inputs)


def source_of(soft: Any = None, online: tuple | None = None, views: int = 1) -> SoftTargetSource:
    """The one place that asks what the soft targets are: `soft` a cache.SoftTargets (with
    stored view parameters: CachedTeacherViews of the run's `views`; without: FixedView), a [N, C]
    tensor (FixedView) or None; `online` (teacher, inputs) from pipeline.online_view; neither:
    HardLabels."""
    if online is not None:
        return OnlineTeacher(*online)
    if soft is None:
        return HardLabels()
    if isinstance(soft, SoftTargets) and soft.params(0) is not None:
        return CachedTeacherViews(soft, views)  # consistent: the teacher's own views, the run's K
    return FixedView.of(soft)
