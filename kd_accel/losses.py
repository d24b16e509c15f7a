"""Distillation losses as small pure functions returning their parts, so each can be logged.

All are computed in fp32 even under bf16/fp16 autocast: softmax/log-softmax of low-precision
logits loses the small probabilities that carry the teacher's "dark knowledge".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F

if TYPE_CHECKING:
    import torch


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the samples that have a hard label (all when label_mask is None).

    With --train-subset the soft targets may cover the whole set while only the subset keeps
    its labels; a batch without any labelled sample contributes no hard loss."""
    if label_mask is None:
        return F.cross_entropy(logits, labels)
    per = F.cross_entropy(logits, labels, reduction="none")
    m = label_mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
    """Plain cross-entropy (the baseline student and the teacher)."""
    hard = F.cross_entropy(student_logits.float(), labels)
    return {"loss": hard, "hard": hard}


def hinton_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   alpha: float, label_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(1-a)*CE(s, y) + a*T^2*KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015).

    KL with log_target and reduction='batchmean' is the true per-sample KL; the T^2 factor keeps
    the soft-target gradients on the same scale as the hard ones when T changes.
    student_logits, teacher_logits: [B, C]; labels: [B]."""
    s = student_logits.float()
    t = teacher_logits.float()
    hard = masked_ce(s, labels, label_mask)
    soft = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


def notebook_mse_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      alpha: float, label_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The notebook's loss, kept only to reproduce it: MSE between the student's *raw
    logits* and the teacher's softened *probabilities* (a mismatch of spaces: see docs/study.md)."""
    s = student_logits.float()
    hard = masked_ce(s, labels, label_mask)
    soft = F.mse_loss(s, F.softmax(teacher_logits.float() / temperature, dim=-1))
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


KD_LOSSES = {"hinton": hinton_kd_loss, "notebook-mse": notebook_mse_loss}

# old names still accepted wherever a loss is named (--kd-loss, compare's --variants, stamps)
LOSS_ALIASES = {"seed-mse": "notebook-mse"}


def loss_name(name: str | None) -> str | None:
    """The current name of a KD loss given by any of its names ('seed-mse' -> 'notebook-mse');
    other values unchanged (None, 'ce', unknown names: the caller refuses those)."""
    return LOSS_ALIASES.get(name, name)
