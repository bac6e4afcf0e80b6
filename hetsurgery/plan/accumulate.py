"""Streaming means and (cross-)covariances of several models' features, block by block, without copies.

A site's features arrive as a view ``(A, d, M)`` of the activation (``A`` leading positions such as the
batch, ``d`` channels, ``M`` trailing positions such as H*W): every ``(a, m)`` is a sample. Products are
float32 GEMMs straight on those views (one batched matmul, or one plain GEMM when ``A`` or ``M`` is 1);
each batch's mean is removed from its products in float64 and batches merge with Chan's parallel update.
``full`` keeps every block (ZipIt! compares features inside a model too); otherwise only the blocks
between models and each feature's variance (enough for LAP and OT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def products(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_samples x yᵀ`` (``d x e``) for views ``x`` (``A x d x M``) and ``y`` (``A x e x M``)."""
    if x.shape[2] == 1:
        return x[:, :, 0].T @ y[:, :, 0]
    if x.shape[0] == 1:
        return x[0] @ y[0].T
    return torch.matmul(x, y.transpose(1, 2)).sum(0)


class BlockAccumulator:
    def __init__(self, widths: Sequence[int], full: bool) -> None:
        self.widths, self.full = tuple(widths), full
        k = len(widths)
        self.n = 0
        self.mean = [torch.zeros(d, dtype=torch.float64) for d in widths]
        self.var = [torch.zeros(d, dtype=torch.float64) for d in widths]
        self.pairs = [(i, j) for i in range(k) for j in range(i, k) if full or i != j]
        # accumulators live on the CPU in float64; the per-batch products stay on the features' device
        self.m2 = {p: torch.zeros(widths[p[0]], widths[p[1]], dtype=torch.float64) for p in self.pairs}
        self.low = [torch.full((d,), float("inf")) for d in widths]
        self.high = [torch.full((d,), float("-inf")) for d in widths]
        self.tracking = [True] * k

    def add(self, feats: Sequence[torch.Tensor]) -> None:
        """One batch: ``feats[k]`` is a ``(A, d_k, M)`` view (never modified)."""
        nb = feats[0].shape[0] * feats[0].shape[2]
        if nb == 0:
            return
        # float32 reductions (float64 ones over strided views are several times slower), float64 sums
        means = [f.sum((0, 2)).double().cpu() / nb for f in feats]
        total = self.n + nb
        weight = self.n * nb / total
        delta = [m - old for m, old in zip(means, self.mean, strict=True)]
        diag: dict[int, torch.Tensor] = {}
        for i, j in self.pairs:
            prod = products(feats[i], feats[j]).double().cpu()
            if i == j:
                diag[i] = prod.diagonal()
            self.m2[(i, j)] += prod - nb * torch.outer(means[i], means[j]) + weight * torch.outer(delta[i], delta[j])
        for k, f in enumerate(feats):
            squares = diag[k] if k in diag else torch.linalg.vector_norm(f, dim=(0, 2)).double().cpu().square()
            self.var[k] += squares - nb * means[k].square() + weight * delta[k].square()
            self.mean[k] += delta[k] * (nb / total)
            if self.tracking[k]:  # until every feature has been seen to vary
                self.low[k] = torch.minimum(self.low[k], f.amin((0, 2)).float().cpu())
                self.high[k] = torch.maximum(self.high[k], f.amax((0, 2)).float().cpu())
                self.tracking[k] = bool((self.low[k] == self.high[k]).any())
        self.n = total

    def constant(self) -> torch.Tensor:
        """Features that took a single value on every sample (exactly, from running min and max)."""
        return torch.cat([lo == hi for lo, hi in zip(self.low, self.high, strict=True)])

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
            cov[idx, idx] = v.clamp_min(0) * scale
        const = self.constant()
        cov[const, :] = 0.0  # a constant feature varies with nothing (float32 sums leave dust)
        cov[:, const] = 0.0
        return cov
