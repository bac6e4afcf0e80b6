"""Units that depth balancing inserted compute nothing, and take no part in what their counterparts compute.

A zero-residual block inserted into the shallower model B (``balance="add"``) is a copy of a neighbour block
whose branch ends in a zeroed BatchNorm: it adds nothing to B's stream, but its inner layers hold the copied
weights. Zipped with the deeper model A's block at that place, those copies took half of every inner layer: the
merged block computed neither A's block nor anything B computes. Xu et al. (supplement S1, eq. 2) merge an
inserted residual layer as the zero it is, ``W* = P_A W_A P⁻¹ + P_B 0 P⁻¹``: the merged block is A's, on the merged
stream, and only its output is weighed as the stream is.

So the groups *inside* such a unit (produced and consumed by its own layers only: a block's inner channels) are
matched to the one model that has the unit, alone and at its width (``M = I``, ``U = I`` for it; ``M = 0``,
``U = 0`` for the models where the unit was inserted); the stream the unit reads and writes stays matched by the
width method. Where two or more models have the unit (three models or more), the width method's match stands.

>>> import torch, hetsurgery as hs
>>> a, b = hs.zoo.resnet((2, 1, 1)), hs.zoo.resnet((1, 1, 1))
>>> r = hs.merge([a, b], [torch.randn(32, 1, 8, 8)], method="zip", depth="lma", progress=False)
>>> [(label, how) for _, label, _, _, how in r.report.groups if how == "alone"]
[('layer1_1_conv1', 'alone')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import fx, nn

from hetsurgery.ir import ModelGraph, OpKind, PermGroup, Unit
from hetsurgery.ir.graph import owner_of
from hetsurgery.ir.lowering import writes_in_place
from hetsurgery.passes.insert_zero_residual import ADD, branch_layer
from hetsurgery.plan.depth import Balance, DepthPlan
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


def inserted_units(depth: DepthPlan | None, k: int) -> frozenset[str]:
    """The keys of model ``k``'s units (on the anchor's names, after balancing) that ``balance="add"`` inserted."""
    if depth is None or k == depth.anchor:
        return frozenset()
    md = depth.model(k)
    return frozenset(key for sa in md.stages if sa.balance is Balance.ADD
                     for p, key in enumerate(sa.units_deep) if p not in sa.positions)


def real_interiors(graphs: Sequence[ModelGraph], depth: DepthPlan | None) -> dict[int, GroupMatch]:
    """The matches of the groups inside every unit that all models but one had inserted: that one's channels
    alone. Known before any data is read, so the statistics pass leaves these groups out, and they stand in the
    width plan whatever the width method would have matched."""
    inserted = [inserted_units(depth, k) for k in range(len(graphs))]
    if not any(inserted):
        return {}
    out = {}
    for unit in graphs[0].units:
        real = [k for k, keys in enumerate(inserted) if unit.key not in keys]
        if len(real) != 1:
            continue
        for grp in interior_groups(graphs[0], unit):
            widths = [g.group(grp.id).size for g in graphs]
            out[grp.id] = alone(grp.id, widths, real[0], unit.key)
    return out


def zero_branches(g: ModelGraph, units: Iterable[str]) -> dict[str, str]:
    """For the statistics pass, the residual adds of ``units`` (blocks ``InsertZeroResidual`` inserted) whose branch
    is exactly zero in ``g``: it ends, through ops that keep zero (``zero_preserving_input``), in a BatchNorm,
    Linear or convolution whose weight and bias are all zero. Each add maps to its other operand, the stream, whose
    values the add returns unchanged: the joint graph takes them instead (``plan.joint.joint_module``), the branch
    is never computed, and the inserted block costs nothing. A branch that is not provably zero stays."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    modules = dict(g.module.named_modules())
    out: dict[str, str] = {}
    for key in units:
        unit = g.unit(key)
        for name in unit.nodes:
            node = nodes[name]
            if g.facts[name].kind is not OpKind.BINARY or node.target not in ADD:
                continue
            operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            zero = [a for a in operands if _is_zero(g, a)]
            if len(operands) == 2 and len(zero) == 1 and not any(writes_in_place(modules, u) for u in node.users):
                out[name] = next(a.name for a in operands if a is not zero[0])
    return out


def _is_zero(g: ModelGraph, node: fx.Node) -> bool:
    """``node``'s output is zero whatever its input: it ends in a BatchNorm, Linear or convolution module whose weight
    and bias are all zero (``branch_layer``, the walk ``InsertZeroResidual`` zeroes by)."""
    layer = branch_layer(g.module, node)
    if layer is None or layer.op != "call_module":
        return False
    mod = g.module.get_submodule(str(layer.target))
    if isinstance(mod, nn.MultiheadAttention):
        return False
    return all(not g.params[f"{layer.target}.{leaf}"].any() for leaf in ("weight", "bias")
               if getattr(mod, leaf, None) is not None)


def interior_groups(g: ModelGraph, unit: Unit) -> list[PermGroup]:
    """The permutable groups whose every tensor belongs to a layer of ``unit`` (a block's inner channels)."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    layers = {str(nodes[n].target) for n in unit.nodes if nodes[n].op == "call_module"}
    tensors = {str(nodes[n].target) for n in unit.nodes if nodes[n].op == "get_attr"}
    return [grp for grp in g.permutable()
            if all(s.param in tensors or owner_of(s.param) in layers for s in grp.slots)]


def alone(gid: int, widths: Sequence[int], k: int, unit: str) -> GroupMatch:
    """Model ``k``'s channels of group ``gid``, at its width, with weight 1; the other models' not at all."""
    d = widths[k]
    merges = tuple(torch.eye(d, dtype=torch.float64) if j == k else torch.zeros(d, w, dtype=torch.float64)
                   for j, w in enumerate(widths))
    unmerges = tuple(m.T.contiguous() for m in merges)
    return GroupMatch(gid, d, merges, unmerges, {"note": f"inside {unit}, which the other models had inserted: "
                                                         f"model {k}'s channels alone"}, kind=MatchKind.ALONE)
