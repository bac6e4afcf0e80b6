"""VGG: conv-(BN)-ReLU stacks with max pooling, a Flatten of the last feature map, two Linear layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg-small": [16, 16, "M", 32, 32, "M", 64, 64],
}


class VGG(nn.Module):
    def __init__(self, cfg: Sequence[int | str], width: float, batch_norm: bool, in_channels: int,
                 num_classes: int, image_size: int, hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            out = max(1, round(int(item) * width))
            layers += [nn.Conv2d(c, out, 3, padding=1), *([nn.BatchNorm2d(out)] if batch_norm else []),
                       nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        hid = max(1, round(hidden * width))
        self.classifier = nn.Sequential(nn.Linear(c * size * size, hid), nn.ReLU(inplace=True),
                                        nn.Linear(hid, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg(cfg: str | Sequence[int | str] = "vgg-small", width: float = 1.0, batch_norm: bool = True, *,
        in_channels: int = 1, num_classes: int = 10, image_size: int = 8, hidden: int = 64) -> VGG:
    """``vgg("vgg11", width=0.25, in_channels=3, image_size=32)``; ``"M"`` in a config is a 2x2 max pool."""
    return VGG(CONFIGS[cfg] if isinstance(cfg, str) else cfg, width, batch_norm, in_channels, num_classes,
               image_size, hidden)
