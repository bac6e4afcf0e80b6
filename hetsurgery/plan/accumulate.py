"""Streaming means and (cross-)covariances of several models' features, block by block.

Chan's parallel update: each batch is centred on its own mean, its products are one float32 GEMM per
block, and the running sums are float64. ``full`` keeps every block (ZipIt! compares features inside a
model too); otherwise only the cross-model blocks and each feature's variance (enough for LAP and OT),
which is ``K(K-1)/2`` GEMMs instead of ``K(K+1)/2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class BlockAccumulator:
    def __init__(self, widths: Sequence[int], full: bool) -> None:
        self.widths, self.full = tuple(widths), full
        k = len(widths)
        self.n = 0
        self.mean = [torch.zeros(d, dtype=torch.float64) for d in widths]
        self.var = [torch.zeros(d, dtype=torch.float64) for d in widths]
        self.pairs = [(i, j) for i in range(k) for j in range(i, k) if full or i != j]
        self.m2 = {p: torch.zeros(widths[p[0]], widths[p[1]], dtype=torch.float64) for p in self.pairs}

    def add(self, feats: Sequence[torch.Tensor]) -> None:
        """One batch: ``feats[k]`` is ``(samples, d_k)`` float32 and ours to modify (it gets centred)."""
        nb = feats[0].shape[0]
        if nb == 0:
            return
        means = [f.mean(0) for f in feats]
        for f, m in zip(feats, means, strict=True):
            f.sub_(m)
        total = self.n + nb
        weight = self.n * nb / total
        delta = [m.double() - old for m, old in zip(means, self.mean, strict=True)]
        for i, j in self.pairs:
            self.m2[(i, j)] += (feats[i].T @ feats[j]).double() + weight * torch.outer(delta[i], delta[j])
        for k, f in enumerate(feats):
            self.var[k] += f.square().sum(0).double() + weight * delta[k].square()
            self.mean[k] += delta[k] * (nb / total)
        self.n = total

    def covariance(self) -> torch.Tensor:
        """The ``D x D`` covariance; without ``full`` the blocks inside a model hold only the variances."""
        offsets = [0]
        for d in self.widths:
            offsets.append(offsets[-1] + d)
        cov = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
        scale = 1.0 / max(self.n - 1, 1)
        for (i, j), m in self.m2.items():
            block = m * scale
            cov[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]] = block
            cov[offsets[j]:offsets[j + 1], offsets[i]:offsets[i + 1]] = block.T
        for k, v in enumerate(self.var):
            idx = torch.arange(offsets[k], offsets[k + 1])
            cov[idx, idx] = v * scale
        return cov
