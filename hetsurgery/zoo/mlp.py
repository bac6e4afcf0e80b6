"""A multi-layer perceptron; images are flattened first."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden: Sequence[int], in_features: int, num_classes: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for w in hidden:
            layers += [nn.Linear(prev, w), *([nn.BatchNorm1d(w)] if batch_norm else []), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def mlp(hidden: Sequence[int] = (64, 64), *, in_features: int = 64, num_classes: int = 10,
        batch_norm: bool = False) -> MLP:
    """``mlp([128, 96])``: Linear-ReLU layers of the given widths, then a linear head.

    ``in_features`` is C*H*W for images (64 for 8x8 digits, 3072 for 3x32x32).
    """
    return MLP(hidden, in_features, num_classes, batch_norm)
