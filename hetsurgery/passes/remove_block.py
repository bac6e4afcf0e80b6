"""``RemoveBlock``: residual blocks bypassed and removed (the inverse of ``InsertZeroResidual``).

A block computes ``exit = act(x + branch(x))`` from the value ``x`` its stream forks at. Removing it makes
every reader of its exit read ``x`` instead; its nodes, layers and tensors go. That is exact only when the
branch is zero on the values it sees (a zero-residual block: ``act`` is then the identity on the stream, as
``InsertZeroResidual`` requires) and an approximation otherwise, so ``exact = False``: measure what it costs
on data (``hetsurgery.assembly.depth.branch_share`` gives each block's share of its stream on
calibration batches; a deeper donor balanced to a shallower base drops the blocks whose branches carry the least).

A block that changes the shape (a strided block with a projection shortcut: ``Unit.fixed``) cannot be
bypassed, and the last block of a stage is never removed (stages never disappear, so stage keys survive).

Before (``resnet((3, 1, 1))``, stage ``stage0``: blocks ``layer1_0_conv1``, ``layer1_1_conv1``,
``layer1_2_conv1``)::

    relu -> [layer1_0 ... add, relu_2] -> [layer1_1 ... add_1, relu_4] -> [layer1_2 ... add_2, relu_6] -> layer2_0

After ``RemoveBlock(("layer1_1_conv1",))``::

    relu -> [layer1_0 ... add, relu_2] -> [layer1_2 ... add_1, relu_4] -> layer2_0

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.resnet((3, 1, 1)), torch.randn(2, 1, 8, 8))
>>> len(RemoveBlock(("layer1_1_conv1",))(g).stage("stage0"))
2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from torch import fx

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, Unit, UnitKind
from hetsurgery.passes.base import Recorded
from hetsurgery.passes.edit import editable, node_named, relift


@dataclass(frozen=True)
class RemoveBlock(Recorded):
    """Remove the residual blocks ``units`` (unit keys): readers of each block's output read its input."""

    units: tuple[str, ...]
    name: ClassVar[str] = "remove-block"
    exact: ClassVar[bool] = False  # exact only where a block's branch is zero

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        blocks = [_removable(g, key) for key in dict.fromkeys(self.units)]
        for st in g.stages:
            left = [k for k in st.units if k not in self.units]
            if st.kind is UnitKind.BLOCK and not left:
                raise PassError(f"{g.name}: removing {', '.join(st.units)} would empty stage {st.key}; keep one block")
        gm = editable(g)
        order = {node.name: i for i, node in enumerate(gm.graph.nodes)}
        blocks.sort(key=lambda u: order[u.exit])
        bypass: dict[str, str] = {}  # a removed block's exit -> the node its readers read now
        for u in blocks:  # in graph order: a block right after a removed one reads what that one read
            entry = bypass.get(u.entry, u.entry)
            node_named(gm, u.exit).replace_all_uses_with(node_named(gm, entry))
            bypass[u.exit] = entry
        attrs = {str(node.target) for u in blocks for name in u.nodes
                 if (node := node_named(gm, name)).op == "get_attr"}
        for u in blocks:  # the block's nodes, last first (each one's readers are gone by then)
            for name in reversed(u.nodes):
                gm.graph.erase_node(node_named(gm, name))
        _drop_attributes(gm, attrs)
        return relift(gm, g)

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        return {"pass": self.name, "units": list(self.units)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The pass ``spec()`` describes."""
        return cls(tuple(str(u) for u in spec["units"]))


def _removable(g: ModelGraph, key: str) -> Unit:
    u = g.unit(key)
    if u.kind is not UnitKind.BLOCK:
        raise PassError(f"{g.name}: unit {key} is a layer, not a residual block; only blocks can be bypassed "
                        "(fuse layers with FuseReluSegment)")
    if u.fixed is not None:
        raise PassError(f"{g.name}: block {key} cannot be bypassed: it {u.fixed}")
    into, out = g.facts[u.entry], g.facts[u.exit]
    if into.shape != out.shape or into.writes != out.writes:
        raise PassError(f"{g.name}: block {key} reads shape {into.shape} but writes {out.shape}; it cannot be bypassed")
    return u


def _drop_attributes(gm: fx.GraphModule, targets: Iterable[str]) -> None:
    """Tensors only the removed blocks read (a layer scale held as an attribute) leave the module too."""
    still = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for target in sorted(set(targets) - still):
        owner, _, leaf = target.rpartition(".")
        try:
            holder = gm.get_submodule(owner) if owner else gm
        except AttributeError:
            continue
        if hasattr(holder, leaf):
            delattr(holder, leaf)

