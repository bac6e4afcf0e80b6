"""OTFusion on weights (Singh & Jaggi 2020): transport neurons by the distance of their incoming weights.

Groups are visited producers-first: when group ``g`` comes, every group its producers read from has its
transport map already, and model ``k``'s incoming weights of ``g`` are first carried into the merged
space along those input axes, ``W̃_k = W_k U_h`` for each input group ``h`` (OTFusion's weight mode aligns
them with ``W_k T diag(1/β)`` instead; ``U_h = diag(1/a) T`` splits each neuron's outgoing weights over the
neurons it went to, see ``ot`` for why). The cost is the euclidean distance of aligned incoming weights,

    C_ij = ‖w̃_i - w_j‖₂    (w̃_i: row i of every parameter that produces g in model k, aligned; w_j: the
                             target's own; BatchNorm scales and shifts included, running statistics not),

and the coupling, its marginals and the maps are ``ot.transport``, ``ot.maps_of`` and ``ot.as_means`` of that cost, as for
activations (a neuron and its Net2Net copies have equal incoming weights: one point, one neuron's mass). No
data is needed.

>>> import torch, hetsurgery as hs
>>> from hetsurgery.passes import ApplyPermutation, random_permutations
>>> g = hs.trace(hs.zoo.mlp([6, 5], in_features=4, num_classes=3), torch.randn(2, 4))
>>> twin = ApplyPermutation(random_permutations(g, 0))(g)
>>> names = set(g.params)
>>> matches = ot_weight_matches([g, twin], [0.5, 0.5], {0: 0, 1: 0}, names)
>>> [bool(torch.equal(m.unmerge[1].sum(0), torch.ones(m.size, dtype=torch.float64))) for m in matches.values()]
[True, True]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from hetsurgery.ir import ModelGraph, PermGroup, Role, Slot, SlotMaps, later_offsets_first, slots_by_param
from hetsurgery.ir.slot_algebra import positions, slot_rows
from hetsurgery.plan.solvers.heads import head_order
from hetsurgery.plan.solvers.ot import (
    OTCost,
    OTMarginals,
    OTSolver,
    Transport,
    as_marginals,
    as_means,
    as_solver,
    blockwise_coupling,
    maps_of,
)
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


def producer_order(g: ModelGraph) -> tuple[list[PermGroup], set[int]]:
    """The permutable groups, each after the groups its producers read from, and the groups on a cycle
    (a residual stream feeds a block whose last layer writes back into the stream), ordered by id."""
    import networkx as nx

    groups = list(g.permutable())
    ids = {grp.id for grp in groups}
    by_param = slots_by_param(g.groups)
    deps = nx.DiGraph()
    deps.add_nodes_from(ids)
    for grp in groups:
        for slot in grp.slots:
            if slot.role is Role.PRODUCE:
                for other, s in by_param[slot.param]:
                    if other != grp.id and other in ids and s.role is Role.CONSUME:
                        deps.add_edge(other, grp.id)
    cond = nx.condensation(deps)
    order = [gid for scc in nx.topological_sort(cond) for gid in sorted(cond.nodes[scc]["members"])]
    cyclic = {gid for scc in cond.nodes if len(members := cond.nodes[scc]["members"]) > 1 for gid in members}
    return [g.group(gid) for gid in order], cyclic


def ot_weight_matches(graphs: Sequence[ModelGraph], weights: Sequence[float], targets: Mapping[int, int],
                      learned: Collection[str], *, solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01,
                      marginals: OTMarginals | str = OTMarginals.PARTIAL) -> dict[int, GroupMatch]:
    """Per group, every model transported onto the neurons of model ``targets[group]``.

    Groups on a cycle are solved twice: first with the input axes of groups not solved yet summarised by
    permutation-invariant sums (per row: the sum and the sum of squares along that axis), then again
    with every map known.
    """
    solver = as_solver(solver)
    order, cyclic = producer_order(graphs[0])
    matches: dict[int, GroupMatch] = {}
    heads: dict[tuple[int, int], torch.Tensor] = {}  # (group, model) -> its head order, shared by tied groups
    for grp in [*order, *(grp for grp in order if grp.id in cyclic)]:
        onto = targets[grp.id]
        rows = [_incoming(g, grp.id, matches, k, learned) for k, g in enumerate(graphs)]
        merges, unmerges = [], []
        for k, r in enumerate(rows):
            cost = torch.cdist(r, rows[onto])
            moved = _head_order(grp, k, cost, heads) if grp.structure.moves and k != onto else None
            width = r.shape[0]
            t = Transport(torch.eye(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)) \
                if k == onto else blockwise_coupling(cost, grp.structure.count, solver, reg, moved,
                                                     inner=grp.structure.inner, marginals=marginals)
            merge, unmerge = maps_of(t.plan, weights[k], t.capacity)
            merges.append(merge)
            unmerges.append(unmerge)
        matches[grp.id] = GroupMatch(grp.id, rows[onto].shape[0], as_means(merges, weights), tuple(unmerges),
                                     {"solver": solver.value, "cost": OTCost.WEIGHTS.value, "onto": onto,
                                      "marginals": as_marginals(marginals).value}, kind=MatchKind.OT)
    return matches


def _head_order(grp: PermGroup, k: int, cost: torch.Tensor, heads: dict[tuple[int, int], torch.Tensor]
                ) -> torch.Tensor:
    """Model ``k``'s head for each head of the target: the order a tied group already chose, or the best by
    this group's incoming weights."""
    for other in (grp.id, *grp.heads_with):
        if (other, k) in heads:
            return heads[(other, k)]
    heads[(grp.id, k)] = head_order([(-cost.T, grp.structure)])
    return heads[(grp.id, k)]


def _incoming(g: ModelGraph, gid: int, done: Mapping[int, GroupMatch], k: int, learned: Collection[str]) -> torch.Tensor:
    """``d x F``: each channel's producing weights, input axes carried into the merged space."""
    grp = g.group(gid)
    by_param = slots_by_param(g.groups)
    maps = SlotMaps.of({h: m for h, m in done.items() if h != gid}, k, normalised=True)
    parts = []
    for slot in grp.slots:
        if slot.role is not Role.PRODUCE or slot.param not in learned or slot.chunks > 1:
            continue
        t = g.params[slot.param]
        for h, other in later_offsets_first(by_param[slot.param]):
            if h == gid or other.dim == slot.dim:  # other rows of a fused tensor: not this group's
                continue
            t = maps.apply(t, h, other) if h in done else _summarised(t, other, g.group(h).size)
        parts.append(slot_rows(t, slot, grp.size).double())
    if not parts:
        return torch.zeros(grp.size, 1, dtype=torch.float64)
    return torch.cat(parts, 1)


def _summarised(t: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """The slot's ``size`` channels replaced by two, their sum and their sum of squares (at every inner
    position): what any order of those channels agrees on."""
    if slot.chunks > 1:
        return t
    if not slot.packed:  # interleaved with other channels: keep the layout, every channel becomes their mean
        idx = positions(slot, size, t.device)
        moved = t.index_select(slot.dim, idx).movedim(slot.dim, 0)
        grid = moved.reshape(size, slot.inner, *moved.shape[1:])
        mean = grid.mean(0, keepdim=True).expand_as(grid).reshape(moved.shape).movedim(0, slot.dim)
        return t.index_copy(slot.dim, idx, mean)
    before, seg, after = t.split([slot.offset, size * slot.inner, t.shape[slot.dim] - slot.offset - size * slot.inner],
                                 dim=slot.dim)
    moved = seg.movedim(slot.dim, 0).reshape(size, slot.inner, *seg.movedim(slot.dim, 0).shape[1:])
    both = torch.cat([moved.sum(0), moved.square().sum(0)]).movedim(0, slot.dim)
    return torch.cat([before, both, after], dim=slot.dim)
