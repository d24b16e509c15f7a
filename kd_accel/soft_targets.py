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
a batch (the distillation loss, fed the teacher's logits its own way: gathered, expanded from
top-k, or computed online).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from .augment import AugmentSpec, CachedViews, DrawnViews
from .cache import SoftTargets, topk_logits
from .training import make_objective, online_objective

if TYPE_CHECKING:
    from .data import ViewPlan

Objective = Callable[[torch.Tensor, dict], dict]


def topk_objective(num_classes: int, objective: Objective) -> Objective:
    """Soft targets from a top-k cache: the batch's stored top-k columns [B, k] expanded to
    [B, num_classes] (cache.topk_logits, row by row: the rows the whole-cache expansion would
    give, bit for bit) just before the loss, so only [N, k] lives in memory."""
    def run(logits: torch.Tensor, batch: dict) -> dict:
        batch["teacher_logits"] = topk_logits(batch, num_classes)
        return objective(logits, batch)

    return run


def own_views(spec: AugmentSpec, stream: int) -> ViewPlan | None:
    """A fresh view per epoch from the phase's own stream; None when the phase does not augment."""
    return None if spec.name == "none" else DrawnViews(spec, stream)


class SoftTargetSource(Protocol):
    """What a student phase asks of where its targets come from."""

    distilled: bool  # False for the baseline: hard labels only

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        """The views the student trains on (its own drawn from `stream`, or the teacher's)."""
        ...

    def columns(self) -> dict[str, torch.Tensor]:
        """Columns [N, ...] gathered with each batch by sample index (fixed teacher logits)."""
        ...

    def feed(self, objective: Objective) -> Objective:
        """`objective` (which reads batch["teacher_logits"], e.g. FitNets' joint loss) given the
        teacher's logits this source's way: gathered (as they are), expanded from top-k, or
        computed by the teacher on the batch."""
        ...

    def objective(self, kind: str, temperature: float, alpha: float) -> Objective:
        """The loss of a batch: hard labels, or the distillation loss `kind` at T and alpha."""
        ...


class _Source:
    distilled = True

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        return own_views(spec, stream)  # the student's own views (with --augment, not the teacher's)

    def columns(self) -> dict[str, torch.Tensor]:
        return {}

    def feed(self, objective: Objective) -> Objective:
        return objective

    def objective(self, kind: str, temperature: float, alpha: float) -> Objective:
        return self.feed(make_objective(kind, temperature, alpha)) if self.distilled else make_objective("ce")


class HardLabels(_Source):
    distilled = False


class CachedTeacherViews(_Source):
    """View e mod K of a K-view cache (K: the run's, at most the file's)."""

    def __init__(self, soft: SoftTargets, views: int):
        self.soft, self.views = soft, views

    def student_views(self, spec: AugmentSpec, stream: int) -> ViewPlan | None:
        return CachedViews(self.soft, self.views)  # the teacher's own views, not the student's stream

    def feed(self, objective: Objective) -> Objective:
        return topk_objective(self.soft.num_classes, objective) if self.soft.topk else objective


class FixedView(_Source):
    """One view's teacher logits (a cache's view 0, or [N, C] given), whatever view the student sees."""

    def __init__(self, columns: dict[str, torch.Tensor], topk_classes: int | None = None):
        self._columns, self.topk_classes = columns, topk_classes

    @classmethod
    def of(cls, soft: SoftTargets | torch.Tensor) -> FixedView:
        if isinstance(soft, SoftTargets):
            return cls(soft.columns(0), soft.num_classes if soft.topk else None)
        return cls({"teacher_logits": soft})

    def columns(self) -> dict[str, torch.Tensor]:
        return self._columns

    def feed(self, objective: Objective) -> Objective:
        return topk_objective(self.topk_classes, objective) if self.topk_classes else objective


class OnlineTeacher(_Source):
    """The frozen teacher (teaching.frozen_teacher: eval mode, never DDP-wrapped) run on every
    batch: on the student's input, or on `inputs(batch)`, the same view made the teacher's way
    when it expects another size or normalisation (pipeline.online_view)."""

    def __init__(self, teacher: torch.nn.Module, inputs: Callable[[dict], torch.Tensor] | None = None):
        self.teacher, self.inputs = teacher, inputs

    def feed(self, objective: Objective) -> Objective:
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
