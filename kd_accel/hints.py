"""FitNets hints (Romero et al., arXiv 1412.6550): the student's intermediate feature map is
trained to regress the teacher's, through a small learned regressor.

Here the guided layer is the student's pooled feature map [B,16,H/2,W/2] and the hint is the
teacher's second block output, the same shape: [B,16,14,14] for 1x28x28 inputs (MNIST),
[B,16,16,16] for 3x32x32 (CIFAR-10). The hint comes from the frozen teacher run online
(its first two blocks only, under no_grad); the logits still come from the cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

    Hint = Callable[[torch.Tensor], torch.Tensor]  # x -> the teacher's hint
    Objective = Callable[..., dict[str, torch.Tensor]]  # (model output, batch) -> the loss and its parts


class FitNetStudent(nn.Module):
    """A student plus a 1x1-conv regressor on its features. forward(x) -> (logits [B,C],
    regressed features [B,16,H/2,W/2]); the regressor is dropped after training."""

    def __init__(self, student: nn.Module, channels: int = 16) -> None:
        super().__init__()
        self.student = student
        self.regressor = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Training: (logits, regressed features), for the joint objective. Evaluation: the
        logits alone, as the student gives them (as torchvision's Inception drops its auxiliary
        logits in eval mode), so evaluation needs to know nothing of hints."""
        feats = self.student.features(x)
        if not self.training:
            return self.student.head(feats)
        return self.student.head(feats), self.regressor(feats)

    def hint_stage(self) -> nn.Sequential:
        """Stage 1's model: the guided layers and the regressor only (the head gets no gradient,
        and DDP must not hold parameters that never receive one). x -> [B,16,H/2,W/2]."""
        return nn.Sequential(self.student.features, self.regressor)


def teacher_hint(teacher: nn.Module) -> Hint:
    """x -> the frozen teacher's block-2 output [B,16,H/2,W/2], never tracked by autograd."""
    teacher.eval().requires_grad_(False)

    def hint(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher.block2(teacher.block1(x)).float()

    return hint


def hint_objective(hint: Hint) -> Objective:
    """Stage 1 of FitNets: only the hint regression (MSE) trains the guided layers.
    `out` is hint_stage()'s regressed features; batch["x"] the float input."""

    def objective(out: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = F.mse_loss(out.float(), hint(batch["x"]))
        return {"loss": loss, "hint": loss}

    return objective


def joint_objective(hint: Hint, kd: Objective, beta: float) -> Objective:
    """KD plus beta x the hint regression, in one stage: `kd` the student's KD objective of its
    logits (training.make_objective, fed its soft targets: soft_targets' source.objective)."""

    def objective(out: tuple[torch.Tensor, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = kd(out[0], batch)
        h = F.mse_loss(out[1].float(), hint(batch["x"]))
        return {**parts, "loss": parts["loss"] + beta * h, "hint": h}

    return objective
