"""ZipIt! (Stoica et al. 2024) greedy feature zipping, and its elastic form for unequal widths (Xu et al. 2025).

All models' features form one pool of ``D = Σ d_k``. Repeatedly the two most similar *clusters* merge
until ``r`` remain (default ``r = max d_k``). The merged cluster's similarity to another cluster is the
smaller of its two parts' similarities (complete linkage), times ``alpha`` when joining them would put
two features of one model together: ZipIt's decay, so a zipped feature merges again only at a
discount, compounding with every merge. For two models every merge after the first kind is of that
sort, and this is exactly ZipIt's rule; for three or more models a clean cluster ``{a_i, b_i}`` still
takes ``c_i`` at full similarity, so copies of one model zip back exactly.

A merge of two clusters that already hold features of the same model ``k`` is a *within-model* merge
for ``k``: it spends one unit of ``k``'s budget ``floor(beta · (D - r) · d_k / D)`` (Xu et al.'s elastic
budget, proportional to the model's width; for equal widths ZipIt's ``beta · (D - r) / K``), and once
it is spent clusters holding ``k`` no longer merge with each other. A zero budget allows no such merge
(ZipIt's reference code lets one through); "shares a model" looks at every member, not only at the
first member's model, which matters for three or more models.

Each merged channel is the weighted mean of its members: ``M = (P·w / column sums)ᵀ`` and ``U = P`` for
the ``D x r`` assignment ``P``, sliced per model; a cluster whose members all have weight 0 is an inert
channel (its row of ``M`` is zero). Each row keeps its best column; a step costs O(D)
plus O(D) per row whose best column changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from hetsurgery.plan.width_plan import GroupMatch, MatchKind

NEG = -np.inf


def zip_match(gid: int, corr: torch.Tensor, widths: Sequence[int], weights: Sequence[float], *,
              width: int | None = None, alpha: float = 0.5, beta: float = 1.0) -> GroupMatch:
    """Zip ``Σ widths`` features down to ``width`` (default: the widest model's width).

    >>> import torch
    >>> c = torch.eye(4, dtype=torch.float64); c[0, 3] = c[3, 0] = c[1, 2] = c[2, 1] = 0.9
    >>> zip_match(0, c, (2, 2), (0.5, 0.5)).info["clusters"]
    [[0, 3], [1, 2]]
    """
    total, k_models = sum(widths), len(widths)
    r = max(widths) if width is None else width
    if not 0 < r <= total:
        raise ValueError(f"group {gid}: cannot zip {total} features into {r}")
    if k_models > 62:
        raise ValueError(f"group {gid}: zip supports at most 62 models")
    origin = np.repeat(np.arange(k_models), widths)
    sim = corr.double().cpu().numpy()
    live = np.repeat(np.array([w > 0 for w in weights]), widths)
    if live.all():
        clusters = _zip(gid, sim, origin, r, alpha, beta)
    else:
        clusters = _zip_live_first(gid, sim, origin, live, r, alpha, beta)
    clusters = sorted((sorted(c) for c in clusters), key=lambda c: c[0])
    return _from_clusters(gid, clusters, widths, weights, origin, alpha, beta)


def _zip(gid: int, sim: np.ndarray, origin: np.ndarray, r: int, alpha: float, beta: float) -> list[list[int]]:
    """The greedy on features ``0 … len(origin)-1`` (``origin``: each feature's model), down to ``r`` clusters."""
    total = len(origin)
    widths = np.bincount(origin, minlength=int(origin.max()) + 1)
    z = _Zipper(sim, origin, [int(beta * (total - r) * d / total) for d in widths], alpha)
    for _ in range(total - r):
        z.step(gid, beta, r)
    return [z.members[i] for i in np.flatnonzero(z.alive)]


def _zip_live_first(gid: int, sim: np.ndarray, origin: np.ndarray, live: np.ndarray, r: int, alpha: float,
                    beta: float) -> list[list[int]]:
    """Models of weight 0 take no part in the merged model, so they must not shape it either.

    The features of the models with positive weight are zipped among themselves (exactly as if the others
    were absent: weights ``[0, 1]`` give model 1 alone, carried into the merged space); the zero-weight
    features then join the cluster they resemble most, or, when ``r`` exceeds the live features, fill the
    remaining channels (inert: their rows of ``M`` are zero).
    """
    on, off = np.flatnonzero(live), np.flatnonzero(~live)
    r_on = min(r, len(on))
    clusters = [[int(on[i]) for i in c] for c in _zip(gid, sim[np.ix_(on, on)], _dense(origin[on]), r_on, alpha, beta)]
    rest = list(off)
    if r > r_on:
        sub = _dense(origin[off])
        spread = len(off) / max(1, int(np.bincount(sub).min()))  # a budget that never runs out for the inert part
        extra = _zip(gid, sim[np.ix_(off, off)], sub, r - r_on, alpha, spread)
        clusters += [[int(off[i]) for i in c] for c in extra]
        rest = []
    for f in rest:
        best = max(range(len(clusters)), key=lambda c: max(sim[f, m] for m in clusters[c]))
        clusters[best].append(int(f))
    return clusters


def _dense(origin: np.ndarray) -> np.ndarray:
    """Model ids renumbered ``0 … k-1`` in order of appearance (budgets are per present model)."""
    _, inverse = np.unique(origin, return_inverse=True)
    return inverse


class _Zipper:
    """The greedy's state: the current similarities between clusters, and each row's best column."""

    def __init__(self, sim: np.ndarray, origin: np.ndarray, budget: list[int], alpha: float) -> None:
        self.eff = sim.copy()
        np.fill_diagonal(self.eff, NEG)
        self.mask = (1 << origin).astype(np.int64)  # the models present in each cluster
        self.clean = np.ones(len(origin), dtype=bool)  # no model twice in the cluster
        self.budget, self.alpha = budget, alpha
        self.members = [[i] for i in range(len(origin))]
        self.alive = np.ones(len(origin), dtype=bool)
        for k, b in enumerate(budget):
            if b <= 0:
                self._forbid(k)
        self.best, self.arg = self.eff.max(1), self.eff.argmax(1)

    def _forbid(self, k: int) -> np.ndarray:
        has = (self.mask & (1 << k)) != 0
        self.eff[np.ix_(has, has)] = NEG
        return has

    def step(self, gid: int, beta: float, r: int) -> None:
        i = int(self.best.argmax())
        j = int(self.arg[i])
        if self.best[i] == NEG:
            raise ValueError(f"group {gid}: budgets (beta={beta}) leave no allowed merge before width {r}")
        i, j = min(i, j), max(i, j)
        shared = int(self.mask[i] & self.mask[j])
        row = np.minimum(self.eff[i], self.eff[j])
        mask = self.mask[i] | self.mask[j]
        clean = bool(self.clean[i] and self.clean[j] and not shared)
        decay = (row != NEG) & ~(clean & self.clean & ((self.mask & mask) == 0))
        row[decay] *= self.alpha  # -inf stays -inf (0 * -inf would be nan)
        row[i] = row[j] = NEG
        self.eff[i, :], self.eff[:, i] = row, row
        self.eff[j, :], self.eff[:, j] = NEG, NEG
        self.members[i] += self.members[j]
        self.alive[j] = False
        self.mask[i], self.clean[i] = mask, clean
        stale = (self.arg == i) | (self.arg == j)
        for k in range(len(self.budget)):
            if shared >> k & 1:
                self.budget[k] -= 1
                if self.budget[k] == 0:
                    stale |= self._forbid(k)
        for k, b in enumerate(self.budget):  # the new cluster may bring a spent model to new partners
            if b <= 0 and self.mask[i] >> k & 1:
                stale |= self._forbid(k)
        stale[i] = True
        better = ~stale & (self.eff[:, i] > self.best)
        self.best[better], self.arg[better] = self.eff[better, i], i
        rows = np.flatnonzero(stale & self.alive)
        self.best[rows], self.arg[rows] = self.eff[rows].max(1), self.eff[rows].argmax(1)
        self.best[j] = NEG


def _from_clusters(gid: int, clusters: list[list[int]], widths: Sequence[int], weights: Sequence[float],
                   origin: np.ndarray, alpha: float, beta: float) -> GroupMatch:
    total, r = sum(widths), len(clusters)
    p = torch.zeros(total, r, dtype=torch.float64)
    for c, feats in enumerate(clusters):
        p[feats, c] = 1.0
    w = torch.tensor([weights[o] for o in origin], dtype=torch.float64)
    mass = (p * w[:, None]).sum(0, keepdim=True)
    # a cluster of zero-weight models' features only takes nothing from anyone (never 0/0)
    m = torch.where(mass > 0, p * w[:, None] / mass.clamp_min(1e-300), torch.zeros_like(p))
    offsets = np.concatenate([[0], np.cumsum(widths)])
    spans = list(itertools.pairwise(offsets.tolist()))
    merges = tuple(m[a:b].T.contiguous() for a, b in spans)
    unmerges = tuple(p[a:b].contiguous() for a, b in spans)
    within = sum(1 for c in clusters if len(c) > len({int(origin[f]) for f in c}))
    return GroupMatch(gid, r, merges, unmerges, {"alpha": alpha, "beta": beta, "clusters": clusters,
                                                 "within_model_clusters": within}, kind=MatchKind.ZIP)
