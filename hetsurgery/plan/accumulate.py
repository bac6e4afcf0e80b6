"""Streaming means and (cross-)covariances of several models' features, block by block.

A site's features arrive as a view ``(A, d, M)`` of the activation (``A`` leading positions such as the
batch, ``d`` channels, ``M`` trailing positions such as H*W): every ``(a, m)`` is a sample. Each batch
is copied once per model into a ``(d, samples)`` matrix, shifted by a fixed per-feature reference (the
first batch's mean), so that every block is one float32 GEMM whose transient memory is the activation's,
and float32 rounding acts on centred values: a feature whose mean dwarfs its spread (a large bias before
a ReLU) keeps its covariance. Batches merge in float64 with Chan's parallel update. ``full`` keeps every
block (ZipIt! compares features inside a model too); otherwise only the blocks between models and each
feature's variance (enough for LAP and OT).

>>> import torch
>>> x = torch.randn(3, 2, 5) + 1000.0         # 15 samples of 2 features with a large mean
>>> acc = BlockAccumulator([2], full=True)
>>> acc.add([x])
>>> ref = torch.cov(x.transpose(1, 2).reshape(-1, 2).T.double())
>>> bool(torch.allclose(acc.covariance(), ref, rtol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

WIDEN = 1 << 18  # elements of a product added into the float64 sums at once (widened first: 2 MB)
PRODUCT = 1 << 21  # elements of a product block made at once (8 MB in float32)


class Scratch:
    """One reusable buffer per model for the centred copies.

    A fresh activation-sized tensor per site and batch is a fresh ``mmap`` whose pages fault in one by
    one (measured: five times the cost of the copy itself); reusing the memory avoids it. A copy is
    only valid until the next call for the same model, which is all ``BlockAccumulator.add`` needs.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, k: int, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (k, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            self.buffers.pop(key, None)  # free the old one before the bigger one exists
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


def centred(f: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``f - shift`` for a ``(A, d, M)`` view, laid out as a contiguous ``(d, A*M)`` matrix (one copy,
    into ``out`` when given: a flat buffer of ``A*d*M`` elements of the result's dtype)."""
    a, d, m = f.shape
    dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
    buf = torch.empty((d, a, m), dtype=dtype, device=f.device) if out is None else out.view(d, a, m)
    torch.sub(f.permute(1, 0, 2), shift.view(d, 1, 1), out=buf)
    return buf.view(d, a * m)


class BlockAccumulator:
    def __init__(self, widths: Sequence[int], full: bool, scratch: Scratch | None = None) -> None:
        self.widths, self.full = tuple(widths), full
        self.scratch = scratch if scratch is not None else Scratch()  # share one among accumulators fed in turn
        k = len(widths)
        self.n = 0
        self.shift: list[torch.Tensor] | None = None  # per model: the reference subtracted before products
        self.mean = [torch.zeros(d, dtype=torch.float64) for d in widths]  # of the shifted features
        self.var = [torch.zeros(d, dtype=torch.float64) for d in widths]
        self.pairs = [(i, j) for i in range(k) for j in range(i, k) if full or i != j]
        # accumulators live on the CPU in float64; the per-batch products stay on the features' device
        self.m2 = {p: torch.zeros(widths[p[0]], widths[p[1]], dtype=torch.float64) for p in self.pairs}
        self.low = [torch.full((d,), float("inf")) for d in widths]
        self.high = [torch.full((d,), float("-inf")) for d in widths]
        self.tracking = [True] * k

    def add(self, feats: Sequence[torch.Tensor]) -> None:
        """One batch: ``feats[k]`` is a ``(A, d_k, M)`` view (never modified)."""
        if feats[0].shape[0] * feats[0].shape[2] == 0:
            return
        xs, means = self.centre(feats)
        self.fold(feats, xs, means)

    def centre(self, feats: Sequence[torch.Tensor], slots: Sequence[int] | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One batch's features minus the reference (set from this batch if it is the first), as ``(d_k, samples)``
        copies in the scratch buffers ``slots`` (default: the model indices), and their means (float64, CPU)."""
        nb = feats[0].shape[0] * feats[0].shape[2]
        if self.shift is None:
            self.shift = [f.mean((0, 2), dtype=torch.float32 if f.dtype != torch.float64 else f.dtype)
                          for f in feats]
        where = range(len(feats)) if slots is None else slots
        xs = [centred(f, s, self.scratch.get(slot, f.numel(), s.dtype, f.device))
              for slot, f, s in zip(where, feats, self.shift, strict=True)]
        return xs, [x.sum(1).double().cpu() / nb for x in xs]

    def fold(self, feats: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], means: Sequence[torch.Tensor]) -> None:
        """Add one batch ``centre`` prepared into the sums."""
        nb = feats[0].shape[0] * feats[0].shape[2]
        total = self.n + nb
        weight = self.n * nb / total
        delta = [m - old for m, old in zip(means, self.mean, strict=True)]
        diag: dict[int, torch.Tensor] = {}
        for i, j in self.pairs:
            # in place, the float32 product widened as it is added (a block of rows at a time for large groups) and
            # the rank-one corrections made by addr_: no matrix of the sums' size besides them (two 5632-channel
            # models: four float64 ones of 254 MB each, before)
            m2 = self.m2[(i, j)]
            if i == j:
                diag[i] = torch.empty(xs[i].shape[0], dtype=torch.float64)
            fold_product(m2, xs[i], xs[j], means[i], means[j], delta[i], delta[j], self.n, nb, self.scratch,
                         diag.get(i) if i == j else None)
        for k, (f, x) in enumerate(zip(feats, xs, strict=True)):
            squares = diag[k] if k in diag else torch.linalg.vector_norm(x, dim=1).double().cpu().square()
            self.var[k] += squares - nb * means[k].square() + weight * delta[k].square()
            self.mean[k] += delta[k] * (nb / total)
            if self.tracking[k]:  # until every feature has been seen to vary; on the raw values, exactly
                self.low[k] = torch.minimum(self.low[k], f.amin((0, 2)).float().cpu())
                self.high[k] = torch.maximum(self.high[k], f.amax((0, 2)).float().cpu())
                self.tracking[k] = bool((self.low[k] == self.high[k]).any())
        self.n = total

    def means(self) -> torch.Tensor:
        """The ``D`` feature means (the shift added back)."""
        if self.shift is None:
            return torch.cat(self.mean)
        return torch.cat([m + s.double().cpu() for m, s in zip(self.mean, self.shift, strict=True)])

    def constant(self) -> torch.Tensor:
        """Features that took a single value on every sample (exactly, from running min and max)."""
        return torch.cat([lo == hi for lo, hi in zip(self.low, self.high, strict=True)])

    def parts(self, *, spend: bool = False) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor]:
        """The covariance as its blocks (``(i, j)``, ``i <= j``: between models ``i`` and ``j``; inside a model only
        with ``full``) and the ``D`` variances; a constant feature varies with nothing (float32 sums leave dust).
        ``spend``: the sums become the blocks in place (no second copy of each), and the accumulator is used up."""
        scale = 1.0 / max(self.n - 1, 1)
        const = [lo == hi for lo, hi in zip(self.low, self.high, strict=True)]
        blocks = {}
        for (i, j), m in self.m2.items():
            block = m.mul_(scale) if spend else m * scale
            block[const[i], :] = 0.0
            block[:, const[j]] = 0.0
            blocks[(i, j)] = block
        var = torch.cat([v.clamp_min(0) * scale for v in self.var])
        var[torch.cat(const)] = 0.0
        if spend:
            self.m2 = {}
        return blocks, var

    def covariance(self) -> torch.Tensor:
        """The ``D x D`` covariance; without ``full`` the blocks inside a model hold only the variances."""
        return assemble(self.widths, *self.parts())


def fold_product(m2: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mean_a: torch.Tensor, mean_b: torch.Tensor,
                 delta_a: torch.Tensor, delta_b: torch.Tensor, n: int, nb: int, scratch: Scratch,
                 diagonal: torch.Tensor | None = None) -> None:
    """Chan's update of the centred cross-moment ``m2`` (``n`` samples so far) by one batch of ``nb``: ``a`` and
    ``b`` are the batch's shifted ``(d, nb)`` features, ``mean_*`` their batch means and ``delta_*`` those minus the
    running means. ``diagonal`` (``a`` is ``b``): filled with the product's diagonal."""
    step = max(1, PRODUCT // max(1, b.shape[0]))
    out = scratch.get(-1, min(step, a.shape[0]) * b.shape[0], a.dtype, a.device)
    add_product(m2, a, b, step, out, diagonal)
    m2.addr_(mean_a, mean_b, alpha=-nb).addr_(delta_a, delta_b, alpha=n * nb / (n + nb))


def add_product(sums: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: int, out: torch.Tensor | None = None,
                diagonal: torch.Tensor | None = None) -> None:
    """``sums += a @ bᵀ`` for float64 ``sums`` on the CPU and float32 ``a`` and ``b`` anywhere: the product made
    ``rows`` rows of ``a`` at a time (into ``out``, a flat buffer of that many rows, when given) and added ``WIDEN``
    elements at a time, since on the CPU an operand of another dtype is widened whole first. Neither the whole product
    (127 MB for 5632 channels) nor a float64 copy of it exists, and the blocks are few sizes, reused, not fresh ones the
    C heap keeps once freed. ``diagonal`` (``a`` is ``b``): filled with the product's diagonal."""
    n = b.shape[0]
    if out is None:
        out = torch.empty(min(rows, a.shape[0]) * n, dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    few = max(1, WIDEN // max(1, n))
    for lo in range(0, a.shape[0], rows):
        part = a[lo:lo + rows]
        prod = torch.matmul(part, b.T, out=out[:part.shape[0] * n].view(part.shape[0], n)).cpu()
        if diagonal is not None:
            diagonal[lo:lo + part.shape[0]] = prod.diagonal(offset=lo).double()
        for r in range(0, prod.shape[0], few):
            sums[lo + r:lo + min(r + few, prod.shape[0])] += prod[r:r + few]


def assemble(widths: Sequence[int], blocks: Mapping[tuple[int, int], torch.Tensor], var: torch.Tensor) -> torch.Tensor:
    """The ``D x D`` covariance of ``BlockAccumulator.parts``."""
    offsets = [0]
    for d in widths:
        offsets.append(offsets[-1] + d)
    cov = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)
    for (i, j), block in blocks.items():
        cov[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]] = block
        cov[offsets[j]:offsets[j + 1], offsets[i]:offsets[i + 1]] = block.T
    idx = torch.arange(offsets[-1])
    cov[idx, idx] = var
    return cov
