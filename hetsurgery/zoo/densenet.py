"""A DenseNet-style network: every layer's output is concatenated to its input (pre-activation BN-ReLU-Conv)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, layers: Sequence[int], growth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(layers):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < len(layers) - 1:
                stages.append(Transition(c, c // 2))
                c //= 2
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.stem(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def densenet(layers: Sequence[int] = (3, 3), growth: int = 12, *, in_channels: int = 1,
             num_classes: int = 10) -> DenseNet:
    """``densenet((3, 3), growth=12)``: two dense blocks of three layers with a transition between."""
    return DenseNet(tuple(layers), growth, in_channels, num_classes)
