"""A small vision transformer: patch embedding, pre-LN encoder blocks, mean pooling, linear head.

``attention="mha"`` uses ``nn.MultiheadAttention``; ``"manual"`` writes q/k/v projections, heads and
softmax(q kᵀ) v by hand; ``"sdpa"`` is the same with ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HandAttention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            y = attn.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, attention: str) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mha = attention == "mha"
        self.attn = (nn.MultiheadAttention(dim, heads, batch_first=True) if self.mha
                     else HandAttention(dim, heads, fused=attention == "sdpa"))
        self.fc1, self.fc2 = nn.Linear(dim, dim * mlp_ratio), nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + (self.attn(h, h, h, need_weights=False)[0] if self.mha else self.attn(h))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class VisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: int, attention: str, in_channels: int,
                 num_classes: int, image_size: int, patch: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def transformer(attention: str = "manual", *, dim: int = 32, depth: int = 2, heads: int = 4, mlp_ratio: int = 2,
                in_channels: int = 1, num_classes: int = 10, image_size: int = 8, patch: int = 2
                ) -> VisionTransformer:
    """``transformer("mha")`` or ``transformer("manual")`` (or ``"sdpa"``) on 8x8 or 32x32 images."""
    if attention not in ("mha", "manual", "sdpa"):
        raise ValueError(f"attention must be 'mha', 'manual' or 'sdpa', not {attention!r}")
    return VisionTransformer(dim, depth, heads, mlp_ratio, attention, in_channels, num_classes, image_size, patch)
