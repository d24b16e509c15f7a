"""The notebook's teacher and student, exactly, in a small registry, built for the data's input
shape (C, H, W): 1x28x28 for MNIST and Fashion-MNIST (the notebook's models), 3x32x32 for CIFAR-10.

Models know nothing of devices, DDP or precision: Accelerate handles those. Weights are stored
as safetensors with the architecture name and input shape in the metadata, so a checkpoint says
what it is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import KDError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


def conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    # "same" padding: 5x5 -> pad 2, 3x3 -> pad 1, so only the pools shrink the map
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def conv_bn_relu_pool(cin: int, cout: int, k: int) -> list[nn.Module]:
    """The notebook's conv -> BN -> ReLU -> 2x2 max-pool, computed as conv -> BN -> pool -> ReLU.

    The same function and the same gradients, bit for bit: ReLU is monotonic, so
    max(relu(a), relu(b), ...) == relu(max(a, b, ...)), and the gradient reaches the same element
    (or is zero in both orders); tests/test_models.py trains both orders and compares weights.
    The ReLU then runs, forward and backward, on a quarter of the elements: measured 12-16% off a
    student step on a 2-core AMD EPYC (docs/performance.md). Conv and BN keep indices 0 and 1,
    so state-dict keys are unchanged."""
    conv, bn, relu = conv_bn_relu(cin, cout, k)
    return [conv, bn, nn.MaxPool2d(2), relu]


class Teacher(nn.Module):
    """x [B,C,H,W] -> conv5 16 -> conv3 16 -> pool [B,16,H/2,W/2] -> conv3 32 -> pool [B,32,H/4,W/4]
    -> fc 32*(H/4)*(W/4)->300 -> fc 300->classes (pools round down).

    1x28x28 (MNIST): [B,16,14,14], [B,32,7,7], fc 1568->300; 481,214 parameters for 10 classes.
    3x32x32 (CIFAR-10): [B,16,16,16], [B,32,8,8], fc 2048->300; 626,014 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        h, w = image_size
        self.input_shape = (in_channels, h, w)  # recorded by save_model
        self.block1 = nn.Sequential(*conv_bn_relu(in_channels, 16, 5))
        self.block2 = nn.Sequential(*conv_bn_relu_pool(16, 16, 3))  # [B,16,H/2,W/2]
        self.block3 = nn.Sequential(*conv_bn_relu_pool(16, 32, 3))  # [B,32,H/4,W/4]
        # the notebook has no activation between the two linear layers; kept as is
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), 300), nn.Linear(300, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


class Student(nn.Module):
    """x [B,C,H,W] -> conv3 16 -> pool [B,16,H/2,W/2] -> fc 16*(H/2)*(W/2)->classes.

    1x28x28 (MNIST): [B,16,14,14], fc 3136->10; 31,562 parameters for 10 classes.
    3x32x32 (CIFAR-10): [B,16,16,16], fc 4096->10; 41,450 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        h, w = image_size
        self.input_shape = (in_channels, h, w)  # recorded by save_model
        self.features = nn.Sequential(*conv_bn_relu_pool(in_channels, 16, 3))  # [B,16,H/2,W/2]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * (h // 2) * (w // 2), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS = {"teacher": Teacher, "student": Student}
DEFAULT_INPUT_SHAPE = (1, 28, 28)  # MNIST's; also what a checkpoint without "input_shape" holds
MIN_IMAGE_SIDE = 4  # the teacher pools twice: H/4 and W/4 must stay >= 1


def check_input_shape(input_shape: Sequence[int | str], where: str = "input shape") -> tuple[int, int, int]:
    """(C, H, W) as a tuple of ints, or one line saying why it cannot be built."""
    try:
        c, h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise KDError(f"{where} {input_shape!r} is not (C, H, W)") from None
    if c < 1 or min(h, w) < MIN_IMAGE_SIDE:
        raise KDError(f"{where} {c}x{h}x{w}: need C >= 1 and H, W >= {MIN_IMAGE_SIDE}")
    return c, h, w


def build_model(arch: str, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A fresh `arch` for images of input_shape (C, H, W), e.g. Split.input_shape."""
    if arch not in MODELS:
        raise KDError(f"unknown architecture {arch!r}; choose from {', '.join(MODELS)}")
    c, h, w = check_input_shape(input_shape)
    return MODELS[arch](num_classes=num_classes, in_channels=c, image_size=(h, w))


def _mismatch(state, expected):
    """The first difference between a checkpoint's tensors and a model's, in words (or None)."""
    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    parts = ([f"missing {names(missing)}"] if missing else []) + ([f"unexpected {names(unexpected)}"] if unexpected else [])
    if parts:
        return "; ".join(parts)
    for name, want in expected.items():
        if state[name].shape != want.shape:
            return f"tensor {name} is {list(state[name].shape)} in the checkpoint, {list(want.shape)} in the model"
    return None
