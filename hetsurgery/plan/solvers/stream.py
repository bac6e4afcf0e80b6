"""Zipping a LayerNorm'd residual stream: the merged channels are the principal directions of all models' streams.

A pre-norm transformer reads its residual stream only through LayerNorms. Once their scales and shifts are
folded into the readers (``passes.FoldNorms``) a LayerNorm is a pure normalisation, ``n(x) = C x / σ(C x)``
with ``C = I − 11ᵀ/d``, and ``n(Q x) = Q n(x)`` for every orthogonal ``Q`` that keeps the all-ones direction:
the stream has no privileged channels, and matching channels one to one (a permutation) uses a small part of
that freedom. ZipIt! merges correlated features and keeps uncorrelated ones apart; on such a stream the
linear form of that is a principal component analysis of the models' features side by side: with
``c = [√w_0 C_0 x_0; …; √w_{K-1} C_{K-1} x_{K-1}]`` (every model's centred stream, weighted) and ``V`` the
top ``r − 1`` eigenvectors of ``E[c cᵀ]`` (over every site of the stream, as the statistics pool them),

    ``z = Σ_k M_k x_k``,  ``M_k = √w_k H V_kᵀ C_k + w_k 1 1ᵀ / d_k``,  ``U_k = V_k Hᵀ / √w_k``,

where ``H`` (``r x (r−1)``) is an orthonormal basis of the merged space's zero-mean directions: the merged
stream is centred, carries both models' streams in the directions that hold their variance (shared
directions once), and ``U_k z ≈ C_k x_k`` reconstructs what model ``k``'s readers saw. The rank-one term maps
a folded norm's scale ``1`` to ``1`` and adds only the stream's mean, which every LayerNorm removes. A model
merged with a permuted copy of itself is exact (the centred features of both span one ``d − 1``-dimensional
space). Only LayerNorm streams (``centred``) are zipped so: an RMSNorm keeps the mean direction, and no map of
this kind carries its folded scale of ones to ones.

>>> import torch
>>> x = torch.randn(500, 4, dtype=torch.float64)
>>> feats = torch.cat([x, x[:, [2, 0, 3, 1]]], 1)
>>> from hetsurgery.plan.stats import GroupStats
>>> s = GroupStats((4, 4), 500, feats.mean(0), torch.cov(feats.T))
>>> m = stream_match(0, s, (0.5, 0.5))
>>> c = x - x.mean(1, keepdim=True)
>>> z = feats[:, :4] @ m.merge[0].T + feats[:, 4:] @ m.merge[1].T
>>> torch.allclose(z @ m.unmerge[0].T, c), torch.allclose(z @ m.unmerge[1].T, c[:, [2, 0, 3, 1]])
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


def stream_match(gid: int, stats: GroupStats, weights: Sequence[float], *, width: int | None = None) -> GroupMatch:
    """The principal-direction zip of a centred (LayerNorm'd, folded) stream onto ``width`` channels (default:
    the widest model's)."""
    widths = stats.widths
    r = max(widths) if width is None else width
    if r < 2:
        raise ValueError(f"group {gid}: a LayerNorm'd stream needs at least 2 channels, not {r}")
    offsets = stats.offsets()
    centring = torch.block_diag(*(_centring(d) for d in widths))
    scale = torch.cat([torch.full((d,), float(w) ** 0.5, dtype=torch.float64) for d, w in zip(widths, weights,
                                                                                                strict=True)])
    joint = centring @ stats.second_moment().double() @ centring
    joint = joint * scale[:, None] * scale[None, :]
    values, vectors = torch.linalg.eigh(joint)
    keep = min(r - 1, int((values > values.max().clamp_min(0) * 1e-12).sum()))
    v = vectors[:, values.argsort(descending=True)[:keep]]  # D x keep
    h = _zero_mean_basis(r)[:, :keep]  # r x keep
    merges, unmerges = [], []
    for k, (d, w) in enumerate(zip(widths, weights, strict=True)):
        vk = v[offsets[k]:offsets[k + 1]]
        ones = torch.full((r, d), float(w) / d, dtype=torch.float64)
        merges.append(float(w) ** 0.5 * h @ vk.T @ _centring(d) + ones)
        unmerges.append(vk @ h.T / float(w) ** 0.5 if w > 0 else torch.zeros(d, r, dtype=torch.float64))
    kept = float(values.clamp_min(0).sort(descending=True).values[:keep].sum() / values.clamp_min(0).sum()
                 .clamp_min(1e-300))
    return GroupMatch(gid, r, tuple(merges), tuple(unmerges),
                      {"note": "LayerNorm'd stream: principal directions of the models' centred features",
                       "directions": keep, "variance_kept": kept}, kind=MatchKind.STREAM)


def _centring(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64) - 1.0 / d


def _zero_mean_basis(r: int) -> torch.Tensor:
    """``r x (r−1)``: Helmert's orthonormal basis of the vectors whose entries sum to zero.

    >>> h = _zero_mean_basis(4)
    >>> torch.allclose(h.T @ h, torch.eye(3, dtype=torch.float64)), torch.allclose(h.sum(0), torch.zeros(3, dtype=torch.float64))
    (True, True)
    """
    h = torch.zeros(r, r - 1, dtype=torch.float64)
    for j in range(1, r):
        h[:j, j - 1] = 1.0
        h[j, j - 1] = -float(j)
        h[:, j - 1] /= (j * (j + 1)) ** 0.5
    return h
