"""Activation matching (Git Re-Basin): correlate features, then one LAP per block against the anchor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.solvers.lap import assignment_value, best_permutation
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch


def permute(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float], anchor: int = 0,
            signature: torch.Tensor | None = None) -> GroupMatch:
    """Each model's channel order that maximises its total correlation with the anchor's channels.

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
    corr = stats.similarity(signature)
    perms, scores = [], []
    for k in range(len(stats.widths)):
        if k == anchor:
            perms.append(torch.arange(stats.widths[k]))
            continue
        score = stats.block(corr, anchor, k)
        perms.append(best_permutation(score, blocks.size))
        scores.append(assignment_value(score, perms[-1]) / stats.widths[k])
    return GroupMatch.from_perms(gid, perms, weights, {"perms": [p.tolist() for p in perms],
                                                       "mean_correlation": scores})
