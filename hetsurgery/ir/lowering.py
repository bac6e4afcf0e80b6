"""Lowering: a ``ModelGraph`` back to a runnable ``GraphModule`` with its current parameters.

Submodules whose parameters changed shape are resynchronised (``in_features``, ``groups``, …, by
``structure.with_tensors``); the ``state_dict`` keys stay those of the traced model.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def tap_module(g: ModelGraph, nodes: Sequence[str]) -> fx.GraphModule:
    """A copy of ``g``'s module (sharing its tensors, in eval mode) that returns the outputs of ``nodes``, in that
    order, and computes nothing after the last of them: how depth alignment reads unit features, the fusion reads
    pre-activations and LayerNorm inputs, and assembly reads the streams around residual blocks.

    >>> import torch, hetsurgery as hs
    >>> g = hs.trace(hs.zoo.mlp([8, 4]), torch.randn(2, 64))
    >>> [tuple(t.shape) for t in tap_module(g, ["layers_1", "layers_2"])(torch.randn(3, 64))]
    [(3, 8), (3, 4)]
    """
    gm = to_module(g, share=True)
    by_name = {n.name: n for n in gm.graph.nodes}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(by_name[n] for n in nodes),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval()
