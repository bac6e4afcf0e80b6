"""A MobileNetV2-style network: inverted residuals with a depthwise 3x3 and a grouped 1x1 projection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, groups: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, groups=groups, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNet(nn.Module):
    def __init__(self, stages: Sequence[tuple[int, int, int]], width: int, expand: int, groups: int,
                 in_channels: int, num_classes: int) -> None:
        super().__init__()
        c = 16 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6())
        blocks = []
        for out, n, stride in stages:
            out *= width
            for i in range(n):
                blocks.append(InvertedResidual(c, out, stride if i == 0 else 1, expand, groups))
                c = out
        self.blocks = nn.Sequential(*blocks)
        head = 4 * c
        self.head = nn.Sequential(nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))))


def mobilenet(stages: Sequence[tuple[int, int, int]] = ((16, 2, 1), (24, 2, 2), (32, 2, 2)), width: int = 1, *,
              expand: int = 4, groups: int = 2, in_channels: int = 1, num_classes: int = 10) -> MobileNet:
    """Stages of ``(out_channels, blocks, stride)``; ``groups`` is the projection conv's group count."""
    return MobileNet(tuple(stages), width, expand, groups, in_channels, num_classes)
