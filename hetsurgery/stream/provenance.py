"""Where each tensor of a streamed model's surgery comes from: a tensor of the checkpoint, or zeros.

A structural pass applied to a streamed model runs on its graph (structure on the meta device), so the values of
the layers it makes are not there. The passes that can run streamed are those whose new tensors are copies of the
input's or zero (``STREAMABLE``): ``InsertZeroResidual`` (LLaMA Pro's block expansion: a copy of a neighbour block,
its output projections zero) records on each new node the layer it copies and the tensors it zeroed
(``passes.edit.COPY_META``, ``ZEROED_META``); ``RemoveBlock`` (layer slicing) only drops tensors. Each tensor of the
result is then traced back, pass after pass, to the checkpoint's tensor it copies or to zeros.

>>> import torch, hetsurgery as hs
>>> from hetsurgery.passes import InsertZeroResidual
>>> g = hs.trace(hs.zoo.resnet((1, 1, 1), in_channels=1), torch.randn(2, 1, 8, 8))
>>> deeper = InsertZeroResidual("stage0", (1,))(g)
>>> sources = provenance(g, deeper)
>>> sources["layer1.1.conv1.weight"], sources["layer1.1.bn2.weight"]
(Copy(name='layer1.0.conv1.weight'), Zeros())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import fx

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, owner_of
from hetsurgery.passes import InsertZeroResidual, RemoveBlock
from hetsurgery.passes.edit import COPY_META, ZEROED_META


@dataclass(frozen=True)
class Copy:
    """The tensor ``name`` of the input."""

    name: str


@dataclass(frozen=True)
class Zeros:
    """Zeros of the tensor's shape."""


Source = Copy | Zeros
STREAMABLE: Mapping[type, str] = MappingProxyType({
    InsertZeroResidual: "copies a neighbour block and zeroes its output projections",
    RemoveBlock: "drops a block's tensors",
})


def check_streamable(p: object) -> None:
    """``PassError`` unless pass ``p`` makes only copies and zeros (``STREAMABLE``)."""
    if type(p) not in STREAMABLE:
        raise PassError(f"{getattr(p, 'name', type(p).__name__)} computes new tensor values, which a model streamed "
                        f"from its checkpoint does not hold; streamed surgery runs "
                        f"{', '.join(k.__name__ for k in STREAMABLE)}")


def provenance(before: ModelGraph, after: ModelGraph) -> dict[str, Source]:
    """Each tensor of ``after`` (a pass applied to ``before``) as a copy of one of ``before``'s, or zeros."""
    old_nodes = {n.name for n in before.module.graph.nodes}
    readers = _readers(after.module.graph)
    out: dict[str, Source] = {}
    for name in after.params:
        node, leaf = readers.get(name, (None, ""))
        if node is not None and node.name not in old_nodes:  # made by the pass: it says where from
            if leaf in node.meta.get(ZEROED_META, ()):
                out[name] = Zeros()
                continue
            copied = node.meta.get(COPY_META)
            if copied is not None:
                out[name] = Copy(f"{copied}.{leaf}" if leaf else copied)
                continue
        elif name in before.params:
            out[name] = Copy(name)
            continue
        raise PassError(f"{after.name}: the pass made {name} with values of its own; a streamed model cannot write it")
    return out


def chained(first: Mapping[str, Source], then: Mapping[str, Source]) -> dict[str, Source]:
    """``then`` (tensors of a later graph in terms of an earlier one) in terms of what ``first`` traces back to."""
    return {name: first[src.name] if isinstance(src, Copy) else src for name, src in then.items()}


def _readers(graph: fx.Graph) -> dict[str, tuple[fx.Node, str]]:
    """Parameter name -> the node that reads it and its name inside the node's layer (``""`` for an attribute)."""
    out: dict[str, tuple[fx.Node, str]] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            out.setdefault(str(node.target), (node, ""))
    return _with_layers(graph, out)


def _with_layers(graph: fx.Graph, out: dict[str, tuple[fx.Node, str]]) -> dict[str, tuple[fx.Node, str]]:
    owning = {str(n.target): n for n in graph.nodes if n.op == "call_module"}
    root = graph.owning_module
    if root is None:
        return out
    for name, _ in [*root.named_parameters(), *root.named_buffers()]:
        owner = owner_of(name)
        while owner and owner not in owning and "." in owner:
            owner = owner_of(owner)
        if owner in owning and name not in out:
            out[name] = (owning[owner], name[len(owner) + 1:])
    return out
