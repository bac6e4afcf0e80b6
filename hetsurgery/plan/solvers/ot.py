"""OTFusion (Singh & Jaggi 2020): optimal transport between two models' neurons with POT.

The cost between neuron ``i`` of model ``k`` and neuron ``j`` of the anchor is the euclidean distance
of their activation vectors, ``sqrt(E[(x_i - y_j)²])``, computed exactly from the streamed second
moments. Marginals are uniform. The transport map ``T`` (``d_k x d_0``) is rescaled by the anchor's
marginal so each anchor (target) neuron receives mass 1: ``T̂ = T · d_0``; then ``U_k = T̂`` and
``M_k = α_k T̂ᵀ``. With equal widths and distinct features ``T̂`` is a permutation. Sinkhorn runs on the
cost divided by its maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ot as pot
import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.stats import GroupStats, signature_agreement
from hetsurgery.plan.width_plan import GroupMatch


def feature_distance(stats: GroupStats, k: int, anchor: int, signature: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(E[(x_i - y_j)²])`` between model ``k``'s features (rows) and the anchor's (columns).

    Constant features of equal value are at distance 0 on the data; a ``signature`` (``channel_signature``)
    separates them by a tiny amount unless their own parameters agree too (see ``GroupStats.similarity``).
    """
    m2 = stats.second_moment()
    xx = stats.block(m2, k, k).diagonal()
    yy = stats.block(m2, anchor, anchor).diagonal()
    xy = stats.block(m2, k, anchor)
    dist = (xx[:, None] + yy[None, :] - 2 * xy).clamp_min(0).sqrt()
    if signature is None:
        return dist
    ties = stats.block(stats.constant_pairs(), k, anchor)
    apart = 1.0 - stats.block(signature_agreement(signature), k, anchor)
    scale = 1e-6 * float(dist.max().clamp_min(1e-12))
    return torch.where(ties, scale * (1.0 + apart), dist)


def transport_map(cost: torch.Tensor, solver: str = "emd", reg: float = 0.01) -> torch.Tensor:
    """The rescaled map ``T̂`` (rows: source neurons, columns: target neurons; columns sum to 1).

    >>> import torch
    >>> transport_map(torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64)).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    c = cost.double().cpu().numpy()
    if solver == "emd":
        t = pot.emd(a, b, c)
    elif solver == "sinkhorn":
        t = np.asarray(pot.sinkhorn(a, b, c / max(c.max(), 1e-12), reg))
        # Sinkhorn meets its marginals only to a tolerance: make every target neuron's mass exactly 1/m
        return torch.from_numpy(t / np.maximum(t.sum(0, keepdims=True), 1e-300))
    else:
        raise ValueError(f"unknown OT solver {solver!r}: use 'emd' or 'sinkhorn'")
    return torch.from_numpy(np.asarray(t) * m)


def ot_match(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float], anchor: int = 0, *,
             solver: str = "emd", reg: float = 0.01, signature: torch.Tensor | None = None) -> GroupMatch:
    """Transport every model onto the anchor's neurons, block by block (heads stay heads)."""
    d0 = stats.widths[anchor]
    merges, unmerges = [], []
    for k, dk in enumerate(stats.widths):
        if k == anchor:
            merges.append(weights[k] * torch.eye(d0, dtype=torch.float64))
            unmerges.append(torch.eye(d0, dtype=torch.float64))
            continue
        cost = feature_distance(stats, k, anchor, signature)
        t = torch.zeros(dk, d0, dtype=torch.float64)
        bk, b0 = dk // blocks.count, d0 // blocks.count
        for j in range(blocks.count):
            t[j * bk:(j + 1) * bk, j * b0:(j + 1) * b0] = transport_map(
                cost[j * bk:(j + 1) * bk, j * b0:(j + 1) * b0], solver, reg)
        merges.append(weights[k] * t.T.contiguous())
        unmerges.append(t)
    return GroupMatch(gid, d0, tuple(merges), tuple(unmerges), {"kind": "ot", "solver": solver})
