"""The MNIST networks of Hinton, Vinyals and Dean 2015 ("Distilling the Knowledge in a Neural
Network", §3), as model code for kd_accel:

    --teacher-arch configs/recipes/hinton_mnist.py:teacher --arch configs/recipes/hinton_mnist.py:student

teacher: 784-1200-1200-10, ReLU, "strongly regularized using dropout and weight-constraints as
described in [Hinton et al. 2012]": dropout on the inputs (20%) and on the hidden units (50%), as
that paper does for MNIST. The weight constraints (a maximum L2 norm of each hidden unit's
incoming weights, the weights renormalised after any update that breaks it) are off by default
(the shipped recipe's teacher has none); `max_norm` turns them on:
--teacher-arch-kwargs '{"max_norm": 3.5}'. The paper's teacher also saw inputs jittered by up to
two pixels (kd_accel: --teacher-augment shift). Paper: 67 test errors.
student: 784-800-800-10, ReLU, no regularisation. Paper: 146 errors on hard labels alone, 74
when trained on the teacher's soft targets at T = 20.

Both take num_classes and input_shape (C, H, W) as kd_accel passes them: the input is flattened,
so any image size works (784 = 1x28x28 for MNIST).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def max_norm(layer: nn.Linear, radius: float) -> nn.Linear:
    """Keep each output unit's incoming weight vector (a row of weight [out, in]) within L2 norm
    `radius`: before every forward the rows longer than it are scaled back onto it. That is the
    projection Hinton et al. 2012 apply after each update, done lazily: the update of step t is
    projected before step t + 1 (and before any evaluation) uses it."""
    def project(module: nn.Linear, _inputs) -> None:
        with torch.no_grad():
            norms = module.weight.norm(dim=1, keepdim=True)  # [out, 1]
            module.weight.mul_((radius / norms.clamp(min=1e-12)).clamp(max=1.0))
    layer.register_forward_pre_hook(project)
    return layer


def mlp(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, hidden: int = 800, layers: int = 2,
        input_dropout: float = 0.0, hidden_dropout: float = 0.0, max_norm_radius: float | None = None) -> nn.Sequential:
    """Flatten -> [dropout] -> `layers` x (Linear(hidden) -> ReLU -> [dropout]) -> Linear(classes):
    [B, C, H, W] -> [B, num_classes]; with `max_norm_radius`, the hidden Linears' rows are kept
    within that L2 norm (max_norm)."""
    if max_norm_radius is not None and not (math.isfinite(max_norm_radius) and max_norm_radius > 0):
        # 0 would read as "off", a negative radius would flip the weights' signs, NaN would fill them
        raise ValueError(f"max_norm must be a finite positive L2 norm, got {max_norm_radius}")
    parts: list[nn.Module] = [nn.Flatten()]
    if input_dropout:
        parts.append(nn.Dropout(input_dropout))
    width = math.prod(input_shape)
    for _ in range(layers):
        layer = nn.Linear(width, hidden)
        parts += [layer if max_norm_radius is None else max_norm(layer, max_norm_radius), nn.ReLU(inplace=True)]
        if hidden_dropout:
            parts.append(nn.Dropout(hidden_dropout))
        width = hidden
    parts.append(nn.Linear(width, num_classes))
    return nn.Sequential(*parts)


def teacher(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, hidden: int = 1200,
            input_dropout: float = 0.2, hidden_dropout: float = 0.5, max_norm: float | None = None) -> nn.Sequential:
    """784-1200-1200-10 with dropout (20% of the inputs, 50% of the hidden units); `max_norm`: the
    hidden units' incoming weights kept within that L2 norm (None: unconstrained)."""
    return mlp(input_shape, num_classes, hidden, 2, input_dropout, hidden_dropout, max_norm)


def student(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
            hidden: int = 800) -> nn.Sequential:
    """784-800-800-10 without regularisation."""
    return mlp(input_shape, num_classes, hidden, 2)
