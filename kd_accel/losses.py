"""Distillation losses as small pure functions returning their parts, so each can be logged.

All are computed in fp32 even under bf16/fp16 autocast: softmax/log-softmax of low-precision
logits loses the small probabilities that carry the teacher's "dark knowledge".

Every loss takes (student logits [B, C], labels [B], teacher logits [B, C], T, alpha) and, by
keyword, what a batch may add: label_mask [B] bool (--train-subset: the samples whose label is
kept), label_smoothing, mix (partner labels [B], lambda [B]: a mixed image's second label), and
its own settings (LOSS_SETTINGS). Every hard term is hard_term's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .errors import KDError

if TYPE_CHECKING:
    Mix = tuple[torch.Tensor, torch.Tensor]  # (partner labels [B] int64, lambda [B] float): timm's mixup target
    Stats = tuple[torch.Tensor, torch.Tensor]  # (mean [B], std [B]) of a row of logits

# logit standardisation's guard against a row of equal logits (std 0), as Sun et al.'s code
ZSCORE_EPS = 1e-7
# DIST's guard in the cosine of two centred rows (DIST_KD, torchdistill)
PEARSON_EPS = 1e-8


def hard_term(logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor | None = None,
              label_smoothing: float = 0.0, mix: Mix | None = None) -> torch.Tensor:
    """The hard-label cross-entropy of every loss (students, baseline, teacher): logits [B, C]
    against labels [B], smoothed by `label_smoothing` (torch's: (1-e)*one-hot + e/C), mixed per
    sample as lambda*CE(y) + (1-lambda)*CE(y_partner) when `mix` is given (timm's mixup target,
    whose CE is linear in it), averaged over the samples label_mask keeps (all when None).

    With --train-subset the soft targets may cover the whole set while only the subset keeps
    its labels; a batch without any labelled sample contributes no hard loss. Without mask and
    mix this is F.cross_entropy itself (the runs before these settings, bit for bit)."""
    if label_mask is None and mix is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    per = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    if mix is not None:
        partner, lam = mix
        lam = lam.to(per.dtype)
        per = lam * per + (1 - lam) * F.cross_entropy(logits, partner, reduction="none",
                                                       label_smoothing=label_smoothing)
    if label_mask is None:
        return per.mean()
    m = label_mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def zscore(logits: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each row [.., C] minus its mean, over its
    standard deviation (unbiased, as torch.std and their code) + 1e-7. `stats`: the row's
    (mean, std) [B] when `logits` are an estimate of the row (a top-k cache's reconstruction:
    the stored, exact ones)."""
    if stats is None:
        mean, std = logits.mean(dim=-1, keepdim=True), logits.std(dim=-1, keepdim=True)
    else:
        mean, std = (s.float().unsqueeze(-1) for s in stats)
    return (logits - mean) / (std + ZSCORE_EPS)


def _soft_inputs(s: torch.Tensor, t: torch.Tensor, standardize: bool, teacher_stats: Stats | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits the soft term softens by T: as they are, or both z-scored."""
    return (zscore(s), zscore(t, teacher_stats)) if standardize else (s, t)


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor | None = None,
            label_smoothing: float = 0.0, mix: Mix | None = None) -> dict[str, torch.Tensor]:
    """Plain cross-entropy (the baseline student and the teacher)."""
    hard = hard_term(student_logits.float(), labels, label_mask, label_smoothing, mix)
    return {"loss": hard, "hard": hard}


def hinton_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   alpha: float, label_mask: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                   mix: Mix | None = None, logit_standardization: bool = False,
                   teacher_stats: Stats | None = None) -> dict[str, torch.Tensor]:
    """(1-a)*CE(s, y) + a*T^2*KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015); with
    logit_standardization, s and t z-scored first (Sun et al. 2024: their recipe is T=2 on the
    z-scored logits), the hard term on the raw logits.

    KL with log_target and reduction='batchmean' is the true per-sample KL; the T^2 factor keeps
    the soft-target gradients on the same scale as the hard ones when T changes.
    student_logits, teacher_logits: [B, C]; labels: [B]."""
    s = student_logits.float()
    t = teacher_logits.float()
    hard = hard_term(s, labels, label_mask, label_smoothing, mix)
    zs, zt = _soft_inputs(s, t, logit_standardization, teacher_stats)
    soft = F.kl_div(
        F.log_softmax(zs / temperature, dim=-1),
        F.log_softmax(zt / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


def notebook_mse_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      alpha: float, label_mask: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                      mix: Mix | None = None) -> dict[str, torch.Tensor]:
    """The notebook's loss, kept only to reproduce it: MSE between the student's *raw
    logits* and the teacher's softened *probabilities* (a mismatch of spaces: see docs/study.md)."""
    s = student_logits.float()
    hard = hard_term(s, labels, label_mask, label_smoothing, mix)
    soft = F.mse_loss(s, F.softmax(teacher_logits.float() / temperature, dim=-1))
    return {"loss": (1 - alpha) * hard + alpha * soft, "hard": hard, "soft": soft}


def _binary(logp: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """[B, C] log-probabilities, the target one-hot [B, C] bool -> [B, 2]: log p(target),
    log(1 - p(target)) (DKD's b), each a logsumexp over its classes (no 1 - p cancellation)."""
    return torch.stack([logp.masked_fill(~onehot, float("-inf")).logsumexp(-1),
                        logp.masked_fill(onehot, float("-inf")).logsumexp(-1)], dim=-1)


def _others(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, C] -> [B, C-1]: each row without its target column (DKD's non-target classes). A
    gather of columns 0..C-2, each from the target on shifted by one: a boolean mask would size
    its result on the host (a device sync every step on a GPU)."""
    cols = torch.arange(z.shape[1] - 1, device=z.device).expand(z.shape[0], -1)
    return z.gather(1, cols + (cols >= target.unsqueeze(1)))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p || q), both given as log-probabilities [B, n]."""
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def dkd_terms(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two terms (Zhao et al., CVPR 2022) of logits already divided by T, s and t [B, C],
    target [B]: TCKD = KL(b_t || b_s) of the binary (target, rest) distributions, NCKD = KL(p^_t
    || p^_s) of the distributions over the non-target classes renormalised (the target's column
    dropped: mdistiller's "- 1000 * gt_mask" taken to its limit)."""
    onehot = F.one_hot(target, s.shape[-1]).bool()
    tckd = _kl(_binary(F.log_softmax(t, dim=-1), onehot), _binary(F.log_softmax(s, dim=-1), onehot))
    nckd = _kl(F.log_softmax(_others(t, target), dim=-1), F.log_softmax(_others(s, target), dim=-1))
    return tckd, nckd


def warmup_factor(epoch: int | None, warmup: int) -> float:
    """DKD's ramp of its loss: min((epoch + 1) / warmup, 1) in 0-based epoch `epoch` (mdistiller's
    min(epoch / warmup, 1) of its 1-based epochs); 1 when the batch names no epoch or warmup is 0."""
    return 1.0 if epoch is None or warmup <= 0 else min((int(epoch) + 1) / warmup, 1.0)


def dkd_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             alpha: float | None = None, label_mask: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
             mix: Mix | None = None, logit_standardization: bool = False, teacher_stats: Stats | None = None,
             dkd_alpha: float = 1.0, dkd_beta: float = 8.0, dkd_warmup: int = 20,
             epoch: int | None = None) -> dict[str, torch.Tensor]:
    """Decoupled KD, as published: CE(s, y) + warm * (dkd_alpha*TCKD + dkd_beta*NCKD), each term
    x T^2, warm = warmup_factor(epoch, dkd_warmup). `alpha` (--alpha) is not used: DKD weighs
    CE by 1 and its terms by dkd_alpha/dkd_beta (docs/usage.md, "Losses").

    The target class is the sample's label (a mixed image's own, the first of its two); a
    sample without a label (label_mask False) takes the teacher's top class. "soft" is the
    warmed DKD term, "tckd"/"nckd" the terms x T^2 before their weights."""
    s = student_logits.float()
    t = teacher_logits.float()
    hard = hard_term(s, labels, label_mask, label_smoothing, mix)
    zs, zt = _soft_inputs(s, t, logit_standardization, teacher_stats)
    target = labels if label_mask is None else torch.where(label_mask.bool(), labels, t.argmax(dim=-1))
    tckd, nckd = (x * temperature**2 for x in dkd_terms(zs / temperature, zt / temperature, target))
    soft = warmup_factor(epoch, dkd_warmup) * (dkd_alpha * tckd + dkd_beta * nckd)
    return {"loss": hard + soft, "hard": hard, "soft": soft, "tckd": tckd, "nckd": nckd}


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, n], [B, n] -> [B]: the Pearson correlation of each row pair, as DIST computes it
    (the cosine of the centred rows, PEARSON_EPS added to the product of their norms)."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              alpha: float | None = None, label_mask: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
              mix: Mix | None = None, logit_standardization: bool = False, teacher_stats: Stats | None = None,
              dist_beta: float = 1.0, dist_gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """DIST (Huang et al., NeurIPS 2022): CE(s, y) + dist_beta*inter + dist_gamma*intra, with
    y = softmax(z/T): inter = T^2 * (1 - mean Pearson of each sample's row), intra = T^2 * (1 -
    mean Pearson of each class's column over the batch). `alpha` is not used (CE weight 1, as
    DIST_KD and torchdistill). The intra-class term correlates the batch's samples, so it
    depends on the (per-process) batch."""
    s = student_logits.float()
    t = teacher_logits.float()
    hard = hard_term(s, labels, label_mask, label_smoothing, mix)
    zs, zt = _soft_inputs(s, t, logit_standardization, teacher_stats)
    ys, yt = F.softmax(zs / temperature, dim=-1), F.softmax(zt / temperature, dim=-1)
    inter = temperature**2 * (1 - pearson_rows(ys, yt).mean())
    intra = temperature**2 * (1 - pearson_rows(ys.T, yt.T).mean())
    soft = dist_beta * inter + dist_gamma * intra
    return {"loss": hard + soft, "hard": hard, "soft": soft, "inter": inter, "intra": intra}


KD_LOSSES = {"hinton": hinton_kd_loss, "notebook-mse": notebook_mse_loss, "dkd": dkd_loss, "dist": dist_loss}

# The settings (config.Distillation fields, passed by those names) each loss reads beyond T and
# alpha; and the losses that read the batch's epoch (DKD's warm-up).
LOSS_SETTINGS = {
    "hinton": ("logit_standardization",),
    "notebook-mse": (),
    "dkd": ("logit_standardization", "dkd_alpha", "dkd_beta", "dkd_warmup"),
    "dist": ("logit_standardization", "dist_beta", "dist_gamma"),
}
READS_EPOCH = ("dkd",)
# the losses whose --alpha is not theirs: CE weighed 1 as published
OWN_WEIGHTS = ("dkd", "dist")

# old names still accepted wherever a loss is named (--kd-loss, compare's --variants, stamps)
LOSS_ALIASES = {"seed-mse": "notebook-mse"}


def loss_name(name: str | None) -> str | None:
    """The current name of a KD loss given by any of its names ('seed-mse' -> 'notebook-mse');
    other values unchanged (None, 'ce', unknown names: the caller refuses those)."""
    return LOSS_ALIASES.get(name, name)


def batch_mix(batch: dict) -> Mix | None:
    """(partner labels [B], lambda [B]) of a batch of mixed images (batch["mix_labels"],
    batch["mix_lam"]), or None."""
    return (batch["mix_labels"], batch["mix_lam"]) if "mix_labels" in batch else None


def batch_inputs(kind: str, batch: dict, settings: dict[str, Any]) -> dict[str, Any]:
    """What loss `kind` reads of a batch besides logits and labels, by keyword: label_mask, mix,
    the epoch (0-based batch["epoch"], for DKD's warm-up) and, standardising logits that a top-k
    cache's columns rebuilt, their stored mean and std ([B] each)."""
    out = {"label_mask": batch.get("label_mask"), "mix": batch_mix(batch)}
    if kind in READS_EPOCH:
        out["epoch"] = batch.get("epoch")
    if settings.get("logit_standardization") and "teacher_std" in batch:
        out["teacher_stats"] = (batch["teacher_mean"], batch["teacher_std"])
    return out


def loss_settings(kd: Any) -> dict[str, Any]:
    """{keyword: value} of the settings `kd` (config.Distillation) gives its loss beyond T and
    alpha (LOSS_SETTINGS). --logit-standardization with a loss that has no softmax to standardise
    before (notebook-mse: raw logits) is one line, not ignored."""
    kind = loss_name(kd.kd_loss)
    names = LOSS_SETTINGS.get(kind, ())
    if getattr(kd, "logit_standardization", False) and "logit_standardization" not in names:
        takes = ", ".join(k for k, v in LOSS_SETTINGS.items() if "logit_standardization" in v)
        raise KDError(f"--logit-standardization applies to --kd-loss {takes}, not {kind} (it regresses raw logits)")
    return {name: getattr(kd, name) for name in names}
