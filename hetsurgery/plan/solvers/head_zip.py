"""Zipping inside matched heads: ZipIt! on each pair of matched heads' channels, a block-diagonal merge.

Once whole heads are matched (``solvers.heads``: anchor head ``i`` with head ``orders[k][i]`` of model ``k``),
the channels of each matched set of heads are zipped down to one head's width (``solvers.zip`` on their
``K·size`` features), and the per-head merges are laid on the diagonal: a head of the merged model draws only
on the heads matched to it, so the heads stay heads (the value of a head mixes its own channels only). This is
for the value/output side of an attention (``v`` rows, ``o`` columns): the attention-weighted sum is linear in
the value channels, so a merged channel may be any combination of them, ZipIt!'s merges inside one model
included. The query/key side is read by ``q kᵀ``, a bilinear form: a channel merged within one model would
multiply sums (``(q_i + q_j)(k_i + k_j)``), so it keeps matching channels one to one (``permute``).

>>> import torch
>>> from hetsurgery.ir import Blocks
>>> from hetsurgery.plan.stats import GroupStats
>>> x = torch.randn(400, 4, dtype=torch.float64)
>>> feats = torch.cat([x, x[:, [3, 2, 1, 0]]], 1)       # the copy has its two heads of 2 swapped, and reversed
>>> s = GroupStats((4, 4), 400, feats.mean(0), torch.cov(feats.T))
>>> m = head_zip(0, s, Blocks(2, 2, moves=True), (0.5, 0.5), [None, torch.tensor([1, 0])])
>>> z = feats[:, :4] @ m.merge[0].T + feats[:, 4:] @ m.merge[1].T
>>> torch.allclose(z @ m.unmerge[0].T, x), torch.allclose(z @ m.unmerge[1].T, x[:, [3, 2, 1, 0]])
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


def head_zip(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float],
             orders: Sequence[torch.Tensor | None], *, signature: torch.Tensor | None = None, alpha: float = 0.5,
             beta: float = 1.0) -> GroupMatch:
    """Per anchor head ``i``, the channels of head ``orders[k][i]`` of every model ``k`` (``None``: head ``i``)
    zipped to ``blocks.size`` channels; equal head counts and sizes in every model."""
    if len(set(stats.widths)) != 1:
        raise ValueError(f"group {gid}: zipping inside heads needs equal head counts, got widths {stats.widths}")
    sim = stats.similarity(signature)
    offsets, size, d = stats.offsets(), blocks.size, stats.widths[0]
    merges = [torch.zeros(d, d, dtype=torch.float64) for _ in stats.widths]
    unmerges = [torch.zeros(d, d, dtype=torch.float64) for _ in stats.widths]
    clusters = []
    for i in range(blocks.count):
        heads = [i if o is None else int(o[i]) for o in orders]
        index = torch.cat([offsets[k] + h * size + torch.arange(size) for k, h in enumerate(heads)])
        m = zip_match(gid, sim[index][:, index], [size] * len(heads), weights, alpha=alpha, beta=beta)
        rows = slice(i * size, (i + 1) * size)
        for k, h in enumerate(heads):
            cols = slice(h * size, (h + 1) * size)
            merges[k][rows, cols] = m.merge[k].double()
            unmerges[k][cols, rows] = m.unmerge[k].double()
        clusters.append(m.info.get("clusters"))
    return GroupMatch(gid, d, tuple(merges), tuple(unmerges),
                      {"note": "heads matched as units, their channels zipped inside each matched set",
                       "head_orders": [None if o is None else o.tolist() for o in orders], "clusters": clusters},
                      kind=MatchKind.ZIP)
