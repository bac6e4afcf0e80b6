"""Lowering: a ``ModelGraph`` back to a runnable ``GraphModule`` with its current parameters.

Submodules whose parameters changed shape are resynchronised (``in_features``, ``groups``, …, by
``structure.with_tensors``); the ``state_dict`` keys stay those of the traced model.
"""

from __future__ import annotations

from torch import fx

from hetsurgery.ir.graph import ModelGraph
from hetsurgery.ir.structure import with_tensors


def to_module(g: ModelGraph, *, share: bool = False) -> fx.GraphModule:
    """A new ``GraphModule`` running ``g``. Parameters are copies unless ``share`` (for internal, read-only use).

    >>> import torch, hetsurgery
    >>> g = hetsurgery.trace(hetsurgery.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4))
    >>> hetsurgery.to_module(g)(torch.randn(5, 4)).shape
    torch.Size([5, 3])
    """
    return with_tensors(g.module, g.params, share=share)
