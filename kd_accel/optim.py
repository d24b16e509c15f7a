"""What a recipe adds to the training loop beyond its loss: the optimizer (Adam, AdamW or SGD,
weight decay kept off biases and norm layers as timm's `param_groups_weight_decay` does), the
learning-rate schedule per optimizer step (linear warm-up, then cosine, step or constant), and
BatchNorm statistics re-estimated for the current weights (precise BN, as pycls and detectron2).

The defaults build exactly what kd_accel built before these settings existed: one parameter
group, torch.optim.Adam(model.parameters(), lr), the cosine or constant multiplier, no clipping,
the running statistics as training left them. So earlier commands train the same weights."""
from __future__ import annotations

import bisect
import inspect
import math
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .config import settings_with_flags
from .errors import KDError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from accelerate import Accelerator
    from torch import nn

    from .config import Config, Groups, Recipe

# A BatchNorm whose running statistics move by less than this per step (torchvision's MobileNetV3
# and EfficientNet: 0.01) lags the weights by ~1/momentum steps: evaluated after a short run it can
# score at chance while its training loss falls (issue 27: mobilenet_v3_small, 9.85% -> 74%).
SLOW_BN_MOMENTUM = 0.05


def adam(params: Any, lr: float, device: torch.device | str) -> torch.optim.Adam:
    """Adam, fused on CUDA: one kernel per step for every parameter, and under fp16 GradScaler's
    overflow check stays on the device instead of a host read every step. Elsewhere torch's
    default (foreach), whose updates CPU runs have always used (bit-identity with earlier runs);
    fused and foreach agree within float rounding (tests/test_training.py)."""
    return torch.optim.Adam(params, lr=lr, fused=torch.device(device).type == "cuda")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's param_groups_weight_decay: [no decay, decay], each if not empty. Biases and every
    1-d (or 0-d) parameter (BatchNorm/LayerNorm weights, scales) get none: decaying a norm's
    scale shrinks the features it normalises without regularising anything. Frozen parameters
    are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, spec: Any, device: torch.device | str) -> torch.optim.Optimizer:
    """The optimizer `spec` (training.TrainSpec) names for `model`'s parameters: adam (L2 weight
    decay, as torch's and timm's 'adam'), adamw (decoupled) or sgd (momentum, nesterov); fused on
    CUDA. Adam without weight decay is today's single group, bit for bit."""
    if spec.opt == "adam" and not spec.weight_decay:
        return adam(model.parameters(), spec.lr, device)
    params = param_groups(model, spec.weight_decay) if spec.weight_decay else model.parameters()
    # each group's weight_decay overrides the default; the default matters without groups
    # (AdamW's own default is 0.01)
    kw = dict(lr=spec.lr, weight_decay=spec.weight_decay, fused=torch.device(device).type == "cuda")
    if spec.opt == "sgd":
        return torch.optim.SGD(params, momentum=spec.momentum, nesterov=spec.nesterov, **kw)
    if spec.opt in ("adam", "adamw"):
        return (torch.optim.Adam if spec.opt == "adam" else torch.optim.AdamW)(params, **kw)
    raise KDError(f"unknown optimizer {spec.opt!r}")


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int = 0, milestones: Sequence[int] = (),
              gamma: float = 0.1, per_step: int = 1) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` (0-based), for LambdaLR: 'constant'
    (the notebook), 'cosine' to zero over the steps after the warm-up (as timm), or 'step' (x gamma
    from each of `milestones`, steps counted from 0 as the warm-up's). A warm-up of W steps
    multiplies by (step + 1) / (W + 1) before step W: from about 0 to 1, never exactly 0 (a step
    at lr 0 would still move Adam's and SGD's moment buffers), as torch's LinearLR(1 / (W + 1)).

    `per_step`: scheduler steps per optimizer step. Accelerate's prepared scheduler steps once
    per process on each optimizer step (P processes: the steps of the un-sharded loader), so the
    warm-up counts in units of P: (s + P) / (W + P) at scheduler step s = P * j is (j + 1) /
    (W / P + 1), the 1-process multiplier of optimizer step j (P = 1: the formula above). The
    cosine and the milestones are fractions of the run and need no such care."""
    if schedule == "constant":
        # closures, not callable objects: LambdaLR's state_dict (in every checkpoint) keeps none of them
        base = lambda step: 1.0
    elif schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        # with W = 0 exactly the expression of earlier versions: the same floats, the same weights
        base = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(max(step - warmup_steps, 0), span) / span))
    elif schedule == "step":
        steps = sorted(milestones)
        base = lambda step: gamma ** bisect.bisect_right(steps, step)
    else:
        raise KDError(f"unknown lr schedule {schedule!r}")
    if not warmup_steps:
        return base
    return lambda step: base(step) * min(1.0, (step + per_step) / (warmup_steps + per_step))


def schedule_of(spec: Any, steps_per_epoch: int, per_step: int = 1) -> Callable[[int], float]:
    """lr_lambda for `spec` (training.TrainSpec), its epochs (length, warm-up, milestones)
    turned into scheduler steps at `steps_per_epoch`, `per_step` of them per optimizer step."""
    return lr_lambda(spec.schedule, spec.epochs * steps_per_epoch, spec.warmup_epochs * steps_per_epoch,
                     [m * steps_per_epoch for m in spec.milestones], spec.gamma, per_step)


def check_recipe(recipe: Recipe, flags: Mapping[str, str]) -> None:
    """The optimizer and schedule settings of one recipe that bounds alone cannot check, one
    line each; `flags`: each setting's flag as the script spells it (--teacher-milestones)."""
    def flag(name: str) -> str:
        return flags.get(name, "--" + name.replace("_", "-"))

    ms = recipe.milestones
    shown = " ".join(map(str, ms or ()))
    if ms is not None and recipe.schedule != "step":
        raise KDError(f"{flag('milestones')} {shown} is for {flag('schedule')} step; the schedule is "
                      f"{recipe.schedule}: drop {flag('milestones')} or give {flag('schedule')} step")
    if recipe.schedule == "step" and not ms:
        raise KDError(f"{flag('schedule')} step needs {flag('milestones')} EPOCH [EPOCH ...]: the epochs at which "
                      f"the lr is multiplied by {flag('gamma')}")
    if ms and (any(b <= a for a, b in zip(ms, ms[1:])) or not 1 <= ms[0] <= ms[-1] <= recipe.epochs):
        raise KDError(f"{flag('milestones')} {shown}: epochs strictly increasing, each within 1..{recipe.epochs} "
                      f"({flag('epochs')})")
    if recipe.nesterov and (recipe.opt != "sgd" or not recipe.momentum):
        raise KDError(f"{flag('nesterov')} is Nesterov momentum of {flag('opt')} sgd with {flag('momentum')} > 0; "
                      f"here {flag('opt')} {recipe.opt}, {flag('momentum')} {recipe.momentum:g}")
    if recipe.warmup_epochs and recipe.warmup_epochs >= recipe.epochs:
        raise KDError(f"{flag('warmup_epochs')} {recipe.warmup_epochs} must be less than {flag('epochs')} "
                      f"{recipe.epochs}: the schedule needs steps after the warm-up")


def check_recipes(cfg: Config, groups: Groups) -> None:
    """check_recipe for the student's and the teacher's recipes among `groups` (cli.validate)."""
    for group in ("student", "teacher"):
        if group in groups:
            flags = {f.name: flag for _, flag, f, _ in settings_with_flags(cfg, {group: groups[group]})}
            check_recipe(getattr(cfg, group), flags)


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (SyncBatchNorm included) that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def slow_bn_momentum(model: nn.Module) -> float | None:
    """The smallest BatchNorm momentum of `model` below SLOW_BN_MOMENTUM, or None."""
    slow = [m.momentum for m in bn_layers(model) if m.momentum is not None and m.momentum < SLOW_BN_MOMENTUM]
    return min(slow) if slow else None


def first_batches(loader: Any, n: int) -> Iterator[dict]:
    """The first `n` batches of a prepared loader's epoch (fewer if it has fewer). Accelerate's
    loader registers itself in GradientState as its iteration starts and leaves only at its end:
    broken off early it would stay registered, so it is closed and taken out here."""
    it = iter(loader)
    try:
        for _ in range(n):
            try:
                yield next(it)
            except StopIteration:
                return
    finally:
        if inspect.isgenerator(it) and inspect.getgeneratorstate(it) != inspect.GEN_CLOSED:
            it.close()
            if hasattr(loader, "end"):
                loader.end()


@torch.no_grad()
def precise_bn(accelerator: Accelerator, model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance of `model` as the plain average
    of its batch statistics over `inputs` (the model's input batches [B, C, H, W]), run in train
    mode without gradients (pycls/detectron2's precise BN): momentum None makes torch keep the
    cumulative average. Each layer's momentum and batch count are restored after; with several
    processes the averages are averaged across them (all_reduce), so every process ends with
    the same statistics. Returns how many batches were used (0: nothing changed)."""
    layers = bn_layers(model)
    if not layers:
        return 0
    saved = [(bn.momentum, bn.num_batches_tracked.clone(), bn.running_mean.clone(), bn.running_var.clone())
             for bn in layers]
    for bn in layers:
        bn.reset_running_stats()  # the count from 0: momentum None averages over these batches only
        bn.momentum = None
    was_training, n = model.training, 0
    model.train()
    try:
        for x in inputs:
            model(x)
            n += 1
    finally:
        model.train(was_training)
        for bn, (momentum, count, mean, var) in zip(layers, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(count)
            if n == 0:  # no batch came (or none finished): the statistics as they were
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    if n and accelerator.num_processes > 1:
        for bn in layers:
            for stat in (bn.running_mean, bn.running_var):
                stat.copy_(accelerator.reduce(stat, "mean"))
    return n
