"""Lowering: a ``ModelGraph`` back to a runnable ``GraphModule`` with its current parameters.

Submodules whose parameters changed shape are resynchronised (``in_features``, ``groups``, …, by
``structure.with_tensors``); the ``state_dict`` keys stay those of the traced model.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

from torch import fx, nn

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
    modules = dict(gm.named_modules())
    taken = []
    for name in nodes:  # a value a later op writes into (``ReLU(inplace=True)``) is returned as it was made
        node = by_name[name]
        if any(writes_in_place(modules, user) for user in node.users):
            with gm.graph.inserting_after(node):
                node = gm.graph.call_method("clone", (node,))
        taken.append(node)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(taken),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval()


def writes_in_place(modules: Mapping[str, nn.Module], node: fx.Node) -> bool:
    """``node`` may write into its input (``relu_``, ``inplace=True``, ``x += y``)."""
    mod = modules.get(str(node.target)) if node.op == "call_module" else None
    return bool(node.kwargs.get("inplace") or getattr(mod, "inplace", False) or node.target in _AUGMENTED
                or (node.op == "call_method" and str(node.target).endswith("_"))
                or getattr(node.target, "__name__", "").endswith("_"))


_AUGMENTED = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv})  # ``x += y`` writes into x
