"""The CIFAR ResNets of RepDistiller and mdistiller (the CRD/DKD CIFAR-100 protocol's models), as
model code for kd_accel:

    --arch configs/recipes/cifar_resnet.py:resnet20 --teacher-arch configs/recipes/cifar_resnet.py:resnet56

He et al. 2016's CIFAR design (§4.2): a 3x3 stem of 16 channels, then three stages of n BasicBlocks
(two 3x3 conv + BN, ReLU between, identity shortcut) at 16, 32, 64 channels, the second and third
halving the map (32 -> 16 -> 8 px for 32 px inputs), global average pooling and one linear layer;
depth = 6n + 2. As in RepDistiller's models/resnet.py (not the paper's zero-padding shortcut): a
shortcut that changes the channels or stride is a 1x1 conv + BN. The "x4" models have 4x the
channels (32 stem, then 64, 128, 256). Parameters for 100 classes (tests/test_user_models.py
counts them): resnet20 278,324 (0.28M), resnet56 861,620 (0.86M), resnet110 1,736,564 (1.74M),
resnet8x4 1,233,540 (1.23M), resnet32x4 7,433,860 (7.43M), as CRD's table lists them.

Each builder takes num_classes and in_channels (kd_accel passes the data's) and returns the logits
[B, num_classes] for inputs [B, in_channels, H, W] (any H, W >= 4: the pooling is global; at 32 px
it is RepDistiller's 8x8 average pool).
"""
from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """x [B,cin,H,W] -> conv3x3 (stride) -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, -> ReLU:
    [B,cout,H/stride,W/stride]."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        # RepDistiller's "option B": a projection where the shape changes, identity elsewhere
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """depth = 6n + 2; widths (stem, stage 1, stage 2, stage 3)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth {depth} is not 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1)
                                          for b in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # RepDistiller's initialisation (the linear layer keeps torch's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # [B,w0,H,W]
        x = self.layer3(self.layer2(self.layer1(x)))  # [B,w3,H/4,W/4]
        return self.fc(self.pool(x).flatten(1))  # [B,classes]


def resnet(depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 1) -> CifarResNet:
    """Any depth 6n + 2; width 4 is the "x4" family (a 32-channel stem, then 64, 128, 256):
    --arch-kwargs '{"depth": 32, "width": 4}' is resnet32x4."""
    widths = (16, 16, 32, 64) if width == 1 else (8 * width, 16 * width, 32 * width, 64 * width)
    return CifarResNet(depth, widths, num_classes, in_channels)


def resnet8(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(8, num_classes, in_channels)


def resnet14(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(14, num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(32, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(44, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(110, num_classes, in_channels)


def resnet8x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(8, num_classes, in_channels, width=4)


def resnet32x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return resnet(32, num_classes, in_channels, width=4)
