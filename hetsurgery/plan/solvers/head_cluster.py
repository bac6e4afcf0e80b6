"""Heads of different counts (8 heads with 12, of one head size): heads zipped as units, then channels inside.

ZipIt!'s greedy (``solvers.zip``) runs twice. First over whole heads: the ``N = Σ_k count_k`` heads of all models
form one pool, the similarity of two heads is the mean similarity of their channels under the best one-to-one
assignment between them (``heads.head_score`` over the whole pool, inside one model too), and the pool is zipped
down to the merged head count (the widest model's by default); a cluster of heads is one merged head, which
draws on its members only, so whole heads map to whole heads. ZipIt!'s budget lets a model merge some of its own
heads (``beta``), as it merges its own features; two heads of one model in one cluster then share one attention
pattern. Then the channels of each cluster: on the value/output side (linear in the values) zipped
(``solvers.zip`` on the members' channels, down to one head), on the query/key side (``q kᵀ`` is bilinear)
matched one to one against the cluster's first member and averaged, or kept in order when rotary embeddings fix
the order inside heads (``inner=False``). Every group whose heads move together (``PermGroup.heads_with``) takes
the same clusters, scored on the groups that a layer's weight reads (the value/output side, as
``permute.stats_head_orders``).

A model that is another with a head duplicated (Net2Net: the copy's output columns halved) merges back exactly:
the copies are one head.

>>> import torch
>>> x = torch.randn(500, 4, dtype=torch.float64)
>>> feats = torch.cat([x, x[:, [2, 3, 0, 1]], x[:, :2]], 1)     # 2 heads of 2; the same swapped, and 1 copy
>>> from hetsurgery.plan.stats import GroupStats
>>> s = GroupStats((4, 6), 500, feats.mean(0), torch.cov(feats.T))
>>> clusters = head_clusters(0, [(s.similarity(), True)], 2, (0.5, 0.5), 3, (2, 3))
>>> clusters
[[0, 3], [1, 2], [4]]
>>> m = clustered_heads(0, s, 2, (0.5, 0.5), clusters, zip_inside=True)
>>> [tuple(t.shape) for t in m.merge]
[(6, 4), (6, 6)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


def head_similarity(sim: torch.Tensor, size: int, inner: bool = True) -> torch.Tensor:
    """``N x N`` for ``N = D / size`` heads: the mean similarity of heads ``i`` and ``j``'s channels, under the best
    one-to-one assignment between them (in order with ``inner=False``)."""
    from scipy.optimize import linear_sum_assignment

    n = sim.shape[0] // size
    pairs = sim.detach().double().cpu().reshape(n, size, n, size).permute(0, 2, 1, 3).numpy()
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            block = pairs[i, j]
            if inner:
                rows, cols = linear_sum_assignment(block, maximize=True)
                value = block[rows, cols].sum()
            else:
                value = np.trace(block)
            out[i, j] = out[j, i] = value / size
    return torch.from_numpy(out)


def head_clusters(gid: int, scored: Sequence[tuple[torch.Tensor, bool]], size: int, weights: Sequence[float],
                  count: int, counts: Sequence[int], *, alpha: float = 0.5, beta: float = 1.0) -> list[list[int]]:
    """The heads of all models (numbered model by model) zipped into ``count`` clusters; ``scored``: each tied
    group's ``D x D`` similarity and whether the order inside its heads is free, summed into one head score."""
    total = sum(head_similarity(sim, size, inner) for sim, inner in scored)
    assert isinstance(total, torch.Tensor)
    total = total / len(scored)
    m = zip_match(gid, total, counts, weights, width=count, alpha=alpha, beta=beta)
    return [list(c) for c in m.info["clusters"]]


def clustered_heads(gid: int, stats: GroupStats, size: int, weights: Sequence[float], clusters: Sequence[Sequence[int]],
                    *, zip_inside: bool, inner: bool = True, signature: torch.Tensor | None = None,
                    alpha: float = 0.5, beta: float = 1.0) -> GroupMatch:
    """The maps of one group given the head ``clusters`` (global head numbers, model by model): merged head ``i`` is
    cluster ``i``, its channels zipped from the members' (``zip_inside``) or matched one to one and averaged."""
    from scipy.optimize import linear_sum_assignment

    sim = stats.similarity(signature)
    counts = [d // size for d in stats.widths]
    origin = np.repeat(np.arange(len(counts)), counts)
    local = np.concatenate([np.arange(c) for c in counts])
    r = len(clusters) * size
    merges = [torch.zeros(r, d, dtype=torch.float64) for d in stats.widths]
    unmerges = [torch.zeros(d, r, dtype=torch.float64) for d in stats.widths]
    inside = []
    for i, members in enumerate(clusters):
        ws = [float(weights[origin[h]]) for h in members]
        rows = slice(i * size, (i + 1) * size)
        if zip_inside and inner and sum(ws) > 0:  # (a cluster of weightless heads only is inert: zero rows)
            index = torch.cat([h * size + torch.arange(size) for h in members])
            m = zip_match(gid, sim[index][:, index], [size] * len(members), ws, width=size, alpha=alpha, beta=beta)
            blocks = [(m.merge[n].double(), m.unmerge[n].double()) for n in range(len(members))]
            inside.append(m.info.get("clusters"))
        else:
            mass = sum(ws)
            ref = members[0]
            blocks = []
            for h, w in zip(members, ws, strict=True):
                if inner and h != ref:
                    score = sim[ref * size:(ref + 1) * size, h * size:(h + 1) * size].double().cpu().numpy()
                    _, cols = linear_sum_assignment(score, maximize=True)
                else:
                    cols = np.arange(size)
                p = torch.zeros(size, size, dtype=torch.float64)
                p[torch.arange(size), torch.from_numpy(np.asarray(cols, dtype=np.int64))] = 1.0
                blocks.append((p * (w / mass if mass > 0 else 0.0), p.T))
        for h, (mk, uk) in zip(members, blocks, strict=True):
            k, j = int(origin[h]), int(local[h])
            cols = slice(j * size, (j + 1) * size)
            merges[k][rows, cols] = mk
            unmerges[k][cols, rows] = uk
    info: dict[str, object] = {"note": "heads of different counts: heads zipped as units, channels "
                    + ("zipped" if zip_inside and inner else "matched one to one") + " inside each merged head",
            "head_clusters": [[(int(origin[h]), int(local[h])) for h in c] for c in clusters]}
    if inside:
        info["clusters"] = inside
    return GroupMatch(gid, r, tuple(merges), tuple(unmerges), info, kind=MatchKind.ZIP)
