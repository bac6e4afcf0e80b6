"""The width-alignment methods ``merge`` knows: a literal table, one function each.

Each takes the traced graphs, the statistics (``None`` for data-free methods), the weights, the anchor
and its own typed options, and returns a ``GroupMatch`` for each group it aligned. Groups a method
cannot handle (no observable features, attention heads for zip) are left out; the driver fills them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from hetsurgery.ir import ModelGraph
from hetsurgery.plan.solvers.ot import ot_match
from hetsurgery.plan.solvers.permute import permute
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch

Stats = Mapping[int, GroupStats]


def plan_average(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int
                 ) -> dict[int, GroupMatch]:
    return {g.id: GroupMatch.identity(g.id, [x.group(g.id).size for x in graphs], weights)
            for g in graphs[0].permutable()}


def plan_permute(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int
                 ) -> dict[int, GroupMatch]:
    assert stats is not None
    return {gid: permute(gid, s, graphs[0].group(gid).structure, weights, anchor) for gid, s in stats.items()}


def plan_weight(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int, *,
                max_sweeps: int = 100, seed: int = 0) -> dict[int, GroupMatch]:
    groups = list(graphs[0].permutable())
    perms_per_model: list[dict[int, torch.Tensor]] = []
    reports = []
    for k, g in enumerate(graphs):
        if k == anchor:
            perms_per_model.append({grp.id: torch.arange(grp.size) for grp in groups})
            continue
        perms, report = weight_matching(graphs[anchor].params, g.params, groups, max_sweeps=max_sweeps, seed=seed)
        perms_per_model.append(perms)
        reports.append(report)
    return {grp.id: GroupMatch.from_perms(grp.id, [p[grp.id] for p in perms_per_model], weights,
                                          {"sweeps": [r["sweeps"] for r in reports]}) for grp in groups}


def plan_ot(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int, *,
            solver: str = "emd", reg: float = 0.01) -> dict[int, GroupMatch]:
    assert stats is not None
    return {gid: ot_match(gid, s, graphs[0].group(gid).structure, weights, anchor, solver=solver, reg=reg)
            for gid, s in stats.items()}


def plan_zip(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int, *,
             alpha: float = 0.5, beta: float = 1.0, width: int | None = None) -> dict[int, GroupMatch]:
    assert stats is not None
    out = {}
    for gid, s in stats.items():
        blocks = graphs[0].group(gid).structure
        if blocks.count > 1:  # heads and grouped convs keep their blocks: match inside them instead
            m = permute(gid, s, blocks, weights, anchor)
            out[gid] = GroupMatch(gid, m.size, m.merge, m.unmerge, {**m.info, "note": "blocks: matched by permute"})
            continue
        out[gid] = zip_match(gid, s.similarity(), s.widths, weights, width=width, alpha=alpha, beta=beta)
    return out


@dataclass(frozen=True)
class Method:
    needs_data: bool
    plan: Callable[..., dict[int, GroupMatch]]
    equal_widths: bool


METHODS: dict[str, Method] = {
    "average": Method(needs_data=False, plan=plan_average, equal_widths=True),
    "permute": Method(needs_data=True, plan=plan_permute, equal_widths=True),
    "weight": Method(needs_data=False, plan=plan_weight, equal_widths=True),
    "ot": Method(needs_data=True, plan=plan_ot, equal_widths=False),
    "zip": Method(needs_data=True, plan=plan_zip, equal_widths=False),
}
