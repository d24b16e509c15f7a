"""Distillation losses as small pure functions returning their parts, so each can be logged.

All are computed in fp32 even under bf16/fp16 autocast: softmax/log-softmax of low-precision
logits loses the small probabilities that carry the teacher's "dark knowledge".
"""
import torch.nn.functional as F


def ce_loss(student_logits, labels, **_):
    """Plain cross-entropy (the baseline student and the teacher)."""
    hard = F.cross_entropy(student_logits.float(), labels)
    return {"loss": hard, "hard": hard}


def hinton_kd_loss(student_logits, labels, teacher_logits, temperature, alpha):
    """(1-a)*CE(s, y) + a*T^2*KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015).

    KL with log_target and reduction='batchmean' is the true per-sample KL; the T^2 factor keeps
    the soft-target gradients on the same scale as the hard ones when T changes.
    student_logits, teacher_logits: [B, C]; labels: [B]."""
    s = student_logits.float()
    t = teacher_logits.float()
    hard = F.cross_entropy(s, labels)
    soft = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


def seed_mse_loss(student_logits, labels, teacher_logits, temperature, alpha):
    """The seed notebook's loss, kept only to reproduce it: MSE between the student's *raw
    logits* and the teacher's softened *probabilities* (a mismatch of spaces: see README)."""
    s = student_logits.float()
    hard = F.cross_entropy(s, labels)
    soft = F.mse_loss(s, F.softmax(teacher_logits.float() / temperature, dim=-1))
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


KD_LOSSES = {"hinton": hinton_kd_loss, "seed-mse": seed_mse_loss}
