"""What the structural passes share: an editable copy of a graph's module, readable names for new layers,
and lifting the edited module again.

A structural pass never touches its input graph: it edits ``editable(g)`` (a structural copy of the module
holding the graph's current tensors, shared), inserts or removes fx nodes and submodules, marks the nodes
it created with its name (``ORIGIN_META``), and returns ``relift(gm, g)``, which recomputes groups, facts,
units and stages from scratch.

New layers get readable qualified names: where the layers they copy sit in a numbered container (a
``Sequential``: ``layers.0``, ``layers.1``, …; ``layer1.0``, ``layer1.1``, …) the container grows
(``layers.7``, ``layer1.3``); anywhere else they go under ``inserted.N``.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8], in_features=4, num_classes=2), torch.randn(2, 4))
>>> new_names(editable(g), ["layers.2", "layers.3"])
{'layers.2': 'layers.5', 'layers.3': 'layers.6'}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import fx, nn

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.structure import with_tensors
from hetsurgery.tracing import lift_graph
from hetsurgery.tracing.units import ORIGIN_META

__all__ = ["CONVS", "COPY_META", "ORIGIN_META", "ZEROED_META", "add_module", "editable", "new_names", "node_named",
           "relift"]

# Where a new layer's tensors come from, on the fx node that reads them (``call_module`` or ``get_attr``): the target
# it is a copy of in the graph the pass was given, and the tensor names (``weight``, ``bias``) the pass set to zero.
# A streamed model, whose tensors stay in its checkpoint, writes the new layers from them (``hetsurgery.stream``).
COPY_META = "hetsurgery_copy_of"
ZEROED_META = "hetsurgery_zeroed"

CONVS: dict[int, type[nn.Conv1d | nn.Conv2d | nn.Conv3d]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}  # by taps


def editable(g: ModelGraph) -> fx.GraphModule:
    """A structural copy of ``g``'s module to edit (its tensors are ``g.params``, shared, never written)."""
    return with_tensors(g.module, g.params, share=True)


def relift(gm: fx.GraphModule, g: ModelGraph) -> ModelGraph:
    """Lift the edited ``gm`` again with ``g``'s example inputs and name (unused submodules dropped); the new
    graph keeps ``g``'s history (``Recorded`` adds the pass that made it). New nodes may read values computed
    after the place they were inserted at (a rotary table computed from the stream's size): the nodes are put
    back in an order where every value exists before it is read, moving as few as possible."""
    from torch.fx.passes.tools_common import stable_topological_sort

    stable_topological_sort(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return replace(lift_graph(gm, g.example_inputs, g.name), passes=g.passes, front_end=g.front_end)


def node_named(gm: fx.GraphModule, name: str) -> fx.Node:
    for node in gm.graph.nodes:
        if node.name == name:
            return node
    raise PassError(f"no node {name!r} in the graph")


def new_names(gm: fx.GraphModule, targets: Sequence[str]) -> dict[str, str]:
    """Readable names for copies of the layers (or tensors) ``targets``, none of them taken in ``gm``."""
    common = _common_prefix(targets)
    parts = common.split(".") if common else []
    for cut in range(len(parts), 0, -1):  # the deepest numbered level: layer1.1 in layer1.1.conv1
        container = ".".join(parts[:cut - 1])
        if parts[cut - 1].isdigit() and _numbered(gm, container):
            old, new = ".".join(parts[:cut]), _join(container, str(_next_number(gm, container)))
            return {t: new + t[len(old):] for t in targets}
    parents = {t.rpartition(".")[0] for t in targets}
    if len(parents) == 1 and all(t.rpartition(".")[2].isdigit() for t in targets) and _numbered(gm, *parents):
        container = parents.pop()  # the layers themselves are numbered: layers.2, layers.3
        first = _next_number(gm, container)
        return {t: _join(container, str(first + i)) for i, t in enumerate(targets)}
    new = f"inserted.{len(_children(gm, 'inserted'))}"
    return {t: _join(new, t[len(common):].lstrip(".") if common else t) for t in targets}


def add_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    if not gm.add_submodule(name, module):
        raise PassError(f"cannot add a layer named {name!r} to the graph")


def _common_prefix(targets: Sequence[str]) -> str:
    split = [t.split(".") for t in targets]
    out: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    if out and all(len(s) == len(out) for s in split):  # one target: its parent is the prefix
        out = out[:-1]
    return ".".join(out)


def _numbered(gm: fx.GraphModule, container: str) -> bool:
    children = _children(gm, container)
    return bool(children) and all(c.isdigit() for c in children)


def _next_number(gm: fx.GraphModule, container: str) -> int:
    return max(int(c) for c in _children(gm, container)) + 1


def _children(gm: fx.GraphModule, path: str) -> list[str]:
    try:
        mod = gm.get_submodule(path) if path else gm
    except AttributeError:
        return []
    return [name for name, _ in mod.named_children()]


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a and b else a or b
