"""A channel's own parameters, in an order no other group affects: biases, BatchNorm scale, shift, statistics.

Used to tell apart features that are indistinguishable on the data (constant: dead ReLUs, zero padding).

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([3], in_features=2, num_classes=2, batch_norm=True), torch.randn(2, 2))
>>> channel_signature(g, 0).shape   # bias, BatchNorm weight, bias, running mean, running var
torch.Size([3, 5])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.ir import ModelGraph, Role
from hetsurgery.ir.slot_algebra import slot_rows


def channel_signature(g: ModelGraph, gid: int) -> torch.Tensor:
    """``(size, p)``: for each channel the values of every one-dimensional produce-side slot."""
    grp = g.group(gid)
    cols = []
    for slot in sorted(grp.slots, key=lambda s: s.sort_key()):
        t = g.params[slot.param]
        if slot.role is Role.PRODUCE and t.dim() == 1 and slot.chunks == 1 and t.is_floating_point():
            cols.append(slot_rows(t, slot, grp.size).double())
    return torch.cat(cols, 1) if cols else torch.zeros(grp.size, 0, dtype=torch.float64)


def joint_signature(graphs: Sequence[ModelGraph], gid: int) -> torch.Tensor:
    """All models' channel signatures stacked (``Σ d_k`` rows), in the order of the joint statistics."""
    return torch.cat([channel_signature(g, gid) for g in graphs])
