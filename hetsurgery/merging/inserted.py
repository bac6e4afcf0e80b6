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

from collections.abc import Sequence

import torch

from hetsurgery.ir import ModelGraph, PermGroup, Unit
from hetsurgery.ir.graph import owner_of
from hetsurgery.plan.depth import Balance, DepthPlan
from hetsurgery.plan.width_plan import GroupMatch, MatchKind, WidthPlan


def inserted_units(depth: DepthPlan | None, k: int) -> frozenset[str]:
    """The keys of model ``k``'s units (on the anchor's names, after balancing) that ``balance="add"`` inserted."""
    if depth is None or k == depth.anchor:
        return frozenset()
    md = depth.model(k)
    return frozenset(key for sa in md.stages if sa.balance is Balance.ADD
                     for p, key in enumerate(sa.units_deep) if p not in sa.positions)


def with_real_interiors(graphs: Sequence[ModelGraph], plan: WidthPlan, depth: DepthPlan | None) -> WidthPlan:
    """``plan`` with the groups inside every unit that all models but one had inserted matched to that one."""
    inserted = [inserted_units(depth, k) for k in range(len(graphs))]
    if not any(inserted):
        return plan
    groups = dict(plan.groups)
    for unit in graphs[0].units:
        real = [k for k, keys in enumerate(inserted) if unit.key not in keys]
        if len(real) != 1:
            continue
        for grp in interior_groups(graphs[0], unit):
            widths = [g.group(grp.id).size for g in graphs]
            groups[grp.id] = alone(grp.id, widths, real[0], unit.key)
    return WidthPlan(plan.method, plan.weights, plan.anchor, groups, plan.keys)


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
