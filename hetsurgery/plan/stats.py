"""Streaming calibration statistics: per group, the mean and joint covariance of all models' features.

For a group of widths ``d_0 … d_{K-1}`` the features at the group's sites are concatenated as
``[model 0 | model 1 | …]`` (``D = Σ d_k`` columns); every other axis (batch, spatial positions, tokens,
the ``inner`` positions after a flatten) counts as samples. Batches are merged with Chan's parallel
update: one float32 GEMM per batch per group, float64 accumulators, nothing stored per sample.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([6], in_features=4, num_classes=2), torch.randn(2, 4))
>>> stats = collect_stats([g, g], [torch.randn(32, 4)], progress=False)
>>> stats[0].cov.shape   # group 0 (the hidden layer) of both models side by side
torch.Size([12, 12])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx
from tqdm.auto import tqdm

from hetsurgery.errors import HetsurgeryError
from hetsurgery.ir import ModelGraph, Site
from hetsurgery.ir.lowering import to_module


@dataclass(frozen=True)
class GroupStats:
    """Mean (``D``) and covariance (``D x D``) of the concatenated features of one group, over ``count`` samples."""

    widths: tuple[int, ...]
    count: int
    mean: torch.Tensor
    cov: torch.Tensor

    def offsets(self) -> list[int]:
        out = [0]
        for d in self.widths:
            out.append(out[-1] + d)
        return out

    def corr(self) -> torch.Tensor:
        """Pearson correlation; a feature with zero variance correlates 0 with everything (never NaN)."""
        std = self.cov.diagonal().clamp_min(0).sqrt()
        denom = std[:, None] * std[None, :]
        return torch.where(denom > 0, self.cov / denom.clamp_min(1e-300), torch.zeros((), dtype=self.cov.dtype))

    def similarity(self) -> torch.Tensor:
        """Correlation for matching: two constant features with the same value are interchangeable (1).

        A dead ReLU is constant 0 in every model; pairing dead features with each other (rather than with
        live ones) keeps the merged function exact on the data.
        """
        sim = self.corr()
        var = self.cov.diagonal()
        const = var <= 1e-12 * float(var.max().clamp_min(1e-300))
        same = (self.mean[:, None] - self.mean[None, :]).abs() <= 1e-6 * (1 + self.mean.abs().max())
        both = const[:, None] & const[None, :] & same
        return torch.where(both, torch.ones((), dtype=sim.dtype), sim)

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` (for euclidean distances between features)."""
        return self.cov * (self.count - 1) / max(self.count, 1) + self.mean[:, None] * self.mean[None, :]

    def block(self, m: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The ``(model i, model j)`` block of a ``D x D`` matrix."""
        o = self.offsets()
        return m[o[i]:o[i + 1], o[j]:o[j + 1]]


class _Accumulator:
    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        x = x.float()
        mb = x.mean(0)
        xc = x - mb
        cb = (xc.T @ xc).double()
        delta = mb.double() - self.mean
        total = self.n + nb
        self.m2 += cb + torch.outer(delta, delta) * (self.n * nb / total)
        self.mean += delta * (nb / total)
        self.n = total


def tap_module(g: ModelGraph, nodes: Sequence[str]) -> fx.GraphModule:
    """A copy of ``g``'s module (sharing its tensors) that returns the outputs of ``nodes`` and nothing else."""
    gm = to_module(g, share=True)
    by_name = {n.name: n for n in gm.graph.nodes}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(by_name[n] for n in nodes),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval()


def features(out: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """The ``(samples, size)`` feature matrix of one site."""
    seg = out.narrow(site.dim, site.offset, size * site.inner).movedim(site.dim, -1)
    seg = seg.reshape(*seg.shape[:-1], size, site.inner).movedim(-1, 0)
    return seg.reshape(-1, size)


def collect_stats(graphs: Sequence[ModelGraph], data: Iterable, *, groups: Sequence[int] | None = None,
                  memory_budget: int | None = None, progress: bool = True) -> dict[int, GroupStats]:
    """Run all models over ``data`` once (or once per chunk of groups under ``memory_budget`` bytes).

    ``graphs`` must share their groups (same topology, widths may differ). Batches are tensors or
    ``(inputs, labels)`` pairs. Groups without sites (inside ``nn.MultiheadAttention``) are skipped.
    """
    ref = graphs[0]
    wanted = [gid for gid in (groups if groups is not None else [g.id for g in ref.permutable()])
              if ref.group(gid).sites]
    out: dict[int, GroupStats] = {}
    for chunk in _chunks(graphs, wanted, memory_budget):
        out.update(_one_pass(graphs, data, chunk, progress))
    return out


def _chunks(graphs: Sequence[ModelGraph], gids: list[int], budget: int | None) -> list[list[int]]:
    if budget is None:
        return [gids] if gids else []
    chunks: list[list[int]] = [[]]
    used = 0
    for gid in gids:
        dim = sum(g.group(gid).size for g in graphs)
        cost = 16 * dim * dim  # the float64 accumulator and one float64 copy while finishing
        if cost > budget:
            raise HetsurgeryError(f"group {gid} alone needs {cost} bytes of statistics; memory_budget is {budget}")
        if used + cost > budget and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(gid)
        used += cost
    return chunks


def _one_pass(graphs: Sequence[ModelGraph], data: Iterable, gids: list[int], progress: bool) -> dict[int, GroupStats]:
    site_nodes = sorted({s.node for gid in gids for s in graphs[0].group(gid).sites})
    taps = [tap_module(g, site_nodes) for g in graphs]
    acc = {gid: _Accumulator(sum(g.group(gid).size for g in graphs)) for gid in gids}
    with torch.no_grad():
        for batch in tqdm(data, desc="statistics", unit="batch", disable=not progress, leave=False):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            outs = [dict(zip(site_nodes, tap(x), strict=True)) for tap in taps]
            for gid in gids:
                cols = []
                for g, out in zip(graphs, outs, strict=True):
                    grp = g.group(gid)
                    cols.append(torch.cat([features(out[s.node], s, grp.size) for s in grp.sites]))
                acc[gid].add(torch.cat(cols, dim=1))
    result = {}
    for gid, a in acc.items():
        if a.n < 2:
            raise HetsurgeryError(f"group {gid}: fewer than two calibration samples; give more data")
        widths = tuple(g.group(gid).size for g in graphs)
        result[gid] = GroupStats(widths, a.n, a.mean, a.m2 / (a.n - 1))
    return result
