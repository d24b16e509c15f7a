"""The training loop: plain PyTorch, wrapped by Accelerate.

One loop trains the teacher, the distilled student and the baseline; they differ only in the
loss function, which receives the batch (images, labels, idx and, for distillation, the
teacher logits gathered from the cache by the same sample index).
"""
import math
import time
from functools import partial

import torch

from .data import make_loader, to_float
from .errors import KDError
from .evaluation import evaluate
from .losses import KD_LOSSES, ce_loss
from .reporting import progress_bar


def hard_label_objective(logits, batch):
    return ce_loss(logits, batch["labels"])


def kd_objective(logits, batch, kind, temperature, alpha):
    return KD_LOSSES[kind](logits, batch["labels"], batch["teacher_logits"], temperature, alpha)


def make_objective(kind, temperature=None, alpha=None):
    """'ce' for hard labels only; 'hinton' or 'seed-mse' for distillation from the cache."""
    if kind == "ce":
        return hard_label_objective
    return partial(kd_objective, kind=kind, temperature=temperature, alpha=alpha)


def lr_lambda(schedule, total_steps):
    """Multiplier of the base lr at a step: 'constant' (the notebook) or 'cosine' to zero."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise KDError(f"unknown lr schedule {schedule!r}")


def fit(accelerator, model, train_columns, test_split, cfg, objective, label):
    """Train `model` on `train_columns` (dict of aligned tensors with 'images', 'labels', ...)
    for cfg.epochs; evaluate on `test_split` after each epoch. Returns (model, history).

    The canonical Accelerate order: data and model -> optimizer/scheduler -> prepare -> loop."""
    loader = make_loader(train_columns, cfg.batch_size, shuffle=True, seed=cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Built on the un-sharded loader length: the prepared scheduler steps once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, cfg.epochs * len(loader)))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    history = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        # loss parts summed on the device: no .item() (host sync) inside the step
        sums, steps = {}, 0
        with progress_bar(accelerator, f"{label} epoch {epoch + 1}/{cfg.epochs}", len(loader)) as advance:
            for batch in loader:
                parts = objective(model(to_float(batch["images"])), batch)
                accelerator.backward(parts["loss"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                steps += 1
                advance()
        means = {k: (v / max(steps, 1)).item() for k, v in sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            raise KDError(f"{label}: non-finite loss in epoch {epoch + 1} ({means}); stopping")
        acc = evaluate(accelerator, model, test_split)
        history.append({"epoch": epoch + 1, **{f"loss_{k}": v for k, v in means.items()}, "test_accuracy": acc})
        parts_txt = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        accelerator.print(f"{label} epoch {epoch + 1}/{cfg.epochs}: {parts_txt} test_acc={acc:.2f}%", flush=True)
    train_time = time.perf_counter() - start
    return accelerator.unwrap_model(model), {"epochs": history, "train_time_s": train_time}
