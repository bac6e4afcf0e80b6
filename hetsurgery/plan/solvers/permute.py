"""Activation matching (Git Re-Basin): correlate features, then one LAP per block against the anchor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from hetsurgery.ir import Blocks, PermGroup, Role
from hetsurgery.plan.solvers.heads import head_orders
from hetsurgery.plan.solvers.lap import assignment_value, best_permutation
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch


def permute(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float], anchor: int = 0,
            signature: torch.Tensor | None = None, orders: Sequence[torch.Tensor | None] | None = None
            ) -> GroupMatch:
    """Each model's channel order that maximises its total correlation with the anchor's channels; heads that
    move (``blocks.moves``) go where ``orders[k]`` (model ``k``'s head for each anchor head) puts them.

    >>> import torch
    >>> from hetsurgery.ir import Blocks
    >>> x = torch.randn(100, 3)
    >>> cov = torch.cov(torch.cat([x, x[:, [2, 0, 1]]], 1).T).double()
    >>> s = GroupStats((3, 3), 100, torch.zeros(6), cov)
    >>> permute(0, s, Blocks(1, 3), (0.5, 0.5)).info["perms"][1]
    [1, 2, 0]
    """
    if len(set(stats.widths)) != 1:
        raise ValueError(f"group {gid}: permute needs equal widths, got {stats.widths}; use zip, ot or mal")
    perms, scores = [], []
    for k in range(len(stats.widths)):
        if k == anchor:
            perms.append(torch.arange(stats.widths[k]))
            continue
        score = stats.similarity_block(anchor, k, signature)
        perms.append(best_permutation(score, blocks, orders[k] if orders is not None else None))
        scores.append(assignment_value(score, perms[-1]) / stats.widths[k])
    return GroupMatch.from_perms(gid, perms, weights, {"perms": [p.tolist() for p in perms],
                                                       "mean_correlation": scores})


def stats_head_orders(groups: Sequence[PermGroup], stats: Mapping[int, GroupStats], anchor: int,
                      signature: Callable[[int], torch.Tensor | None]) -> dict[int, list[torch.Tensor | None]]:
    """Per group with moving heads, each model's head for every anchor head (``None`` for the anchor), from
    the correlations of the heads' outputs (``solvers.heads``): of the tied groups, those a layer's weight reads
    (the value/output side: what a head contributes, Verma & Elbayad's head features), all of them where none
    is. The query/key side says how a head attends, not what it computes; on the digits ViT pair leaving it
    out of the head score took homogeneous zip + REPAIR from 44.6 to 48.6 joint."""
    movers = [g for g in groups if g.structure.moves and g.id in stats]
    if not movers:
        return {}
    outputs = {g.id for g in movers if g.slots_with(Role.CONSUME)} or {g.id for g in movers}
    out: dict[int, list[torch.Tensor | None]] = {g.id: [None] * len(stats[g.id].widths) for g in movers}
    for k in range(len(stats[movers[0].id].widths)):
        if k == anchor:
            continue
        def score(gid: int, k: int = k) -> torch.Tensor | None:
            return stats[gid].similarity_block(anchor, k, signature(gid)) if gid in outputs else None

        for gid, order in head_orders(movers, score).items():
            out[gid][k] = order
    return out
