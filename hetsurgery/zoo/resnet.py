"""CIFAR-style ResNet (He et al. 2016, section 4.2): three stages of basic blocks, widths 16/32/64 x width.

``shortcut="conv"`` uses a 1x1 conv + BN where the shape changes (option B); ``shortcut="pad"`` uses
option A (subsample and zero-pad the channels), which ties the residual stream to padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) if (stride != 1 or cin != cout) and shortcut == "pad" else 0
        self.stride = stride
        self.shortcut = nn.Sequential()
        if (stride != 1 or cin != cout) and shortcut == "conv":
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:
            skip = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            skip = self.shortcut(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], width: int, shortcut: str, in_channels: int, num_classes: int) -> None:
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            layer = []
            for j in range(n):
                layer.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = w
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet(blocks_per_stage: Sequence[int] = (3, 3, 3), width: int = 1, shortcut: str = "conv", *,
           in_channels: int = 1, num_classes: int = 10) -> ResNet:
    """``resnet((3, 3, 3), width=4)`` is a ResNet-20 x4; depth = 6n + 2 for n blocks per stage."""
    if shortcut not in ("conv", "pad"):
        raise ValueError(f"shortcut must be 'conv' or 'pad', not {shortcut!r}")
    return ResNet(tuple(blocks_per_stage), width, shortcut, in_channels, num_classes)


def resnet20(width: int = 1, **kw) -> ResNet:
    return resnet((3, 3, 3), width, **kw)


def resnet26(width: int = 1, **kw) -> ResNet:
    return resnet((4, 4, 4), width, **kw)


def resnet32(width: int = 1, **kw) -> ResNet:
    return resnet((5, 5, 5), width, **kw)


def resnet50(width: int = 1, **kw) -> ResNet:
    return resnet((8, 8, 8), width, **kw)
