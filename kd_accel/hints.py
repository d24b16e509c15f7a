"""FitNets hints (Romero et al., arXiv 1412.6550): the student's intermediate feature map is
trained to regress the teacher's, through a small learned regressor.

Here the guided layer is the student's pooled feature map [B,16,H/2,W/2] and the hint is the
teacher's second block output, the same shape: [B,16,14,14] for 1x28x28 inputs (MNIST),
[B,16,16,16] for 3x32x32 (CIFAR-10). The hint comes from the frozen teacher run online
(its first two blocks only, under no_grad); the logits still come from the cache.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .losses import KD_LOSSES, loss_name


class FitNetStudent(nn.Module):
    """A student plus a 1x1-conv regressor on its features. forward(x) -> (logits [B,C],
    regressed features [B,16,H/2,W/2]); the regressor is dropped after training."""

    def __init__(self, student, channels=16):
        super().__init__()
        self.student = student
        self.regressor = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x):
        """Training: (logits, regressed features), for the joint objective. Evaluation: the
        logits alone, as the student gives them (as torchvision's Inception drops its auxiliary
        logits in eval mode), so evaluation needs to know nothing of hints."""
        feats = self.student.features(x)
        if not self.training:
            return self.student.head(feats)
        return self.student.head(feats), self.regressor(feats)

    def hint_stage(self):
        """Stage 1's model: the guided layers and the regressor only (the head gets no gradient,
        and DDP must not hold parameters that never receive one). x -> [B,16,H/2,W/2]."""
        return nn.Sequential(self.student.features, self.regressor)


def teacher_hint(teacher):
    """x -> the frozen teacher's block-2 output [B,16,H/2,W/2], never tracked by autograd."""
    teacher.eval().requires_grad_(False)

    def hint(x):
        with torch.no_grad():
            return teacher.block2(teacher.block1(x)).float()

    return hint


def hint_objective(hint):
    """Stage 1 of FitNets: only the hint regression (MSE) trains the guided layers.
    `out` is hint_stage()'s regressed features; batch["x"] the float input."""

    def objective(out, batch):
        loss = F.mse_loss(out.float(), hint(batch["x"]))
        return {"loss": loss, "hint": loss}

    return objective


def joint_objective(hint, kind, temperature, alpha, beta):
    """KD from the cache plus beta x the hint regression, in one stage."""

    def objective(out, batch):
        parts = KD_LOSSES[loss_name(kind)](out[0], batch["labels"], batch["teacher_logits"], temperature, alpha,
                                label_mask=batch.get("label_mask"))
        h = F.mse_loss(out[1].float(), hint(batch["x"]))
        return {**parts, "loss": parts["loss"] + beta * h, "hint": h}

    return objective
