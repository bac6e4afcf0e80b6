"""``RepairStatistics``: REPAIR (Jordan et al. 2023) for models without BatchNorm statistics to reset.

Averaging two aligned models whose features correlate imperfectly shrinks the merged features' variance, layer
after layer, and a transformer's LayerNorms do not undo that inside a block (the attention logits flatten,
the MLP's pre-activations sink towards zero). REPAIR gives every merged feature the statistics it should have:
the weighted mean of the statistics of the models' aligned features (``targets``: per layer, the mean and the
standard deviation of each output channel, ``merging.repair.repair_targets``). Each listed layer (a Linear or a
convolution, called as a module) gets ``W ← diag(s) W`` and ``b ← s (b − μ) + μ*`` with ``s = σ* / σ``, where
``μ, σ`` are its output's statistics in the merged model on the calibration data, measured after the layers
before it were repaired (layers that do not depend on each other are measured in one pass); a layer without a
bias only has its scale set. A channel that does not vary (``σ ≈ 0``) keeps its scale.

Before: ``blocks.0.fc1`` of a merged ViT has per-channel standard deviations ``[0.4, 0.7, …]`` where the two
models' aligned ``fc1`` had ``[0.9, 1.1, …]`` and ``[0.7, 1.3, …]``. After ``RepairStatistics(targets, data)``:
``[0.8, 1.2, …]``, and the means are the models' mean means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.ir.lowering import tap_module
from hetsurgery.passes.base import Recorded

Moments = tuple[torch.Tensor, torch.Tensor]  # per output channel: mean, standard deviation (float64)


@dataclass(frozen=True, eq=False)
class RepairStatistics(Recorded):
    """Give each layer of ``targets`` (fx node name -> per-channel mean and std) those statistics, in the order
    of ``levels`` (lists of node names measured together), on the first ``max_samples`` samples of ``data``."""

    targets: Mapping[str, Moments] = field(repr=False)
    levels: tuple[tuple[str, ...], ...]
    data: Iterable = field(repr=False)
    max_samples: int | None = None
    device: torch.device | str | None = None
    name: ClassVar[str] = "repair-statistics"
    exact: ClassVar[bool] = False

    def recorded(self) -> RepairStatistics:
        """The history keeps the layers repaired, not the statistics or the data."""
        return replace(self, targets={}, data=())

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        for level in self.levels:
            measured = layer_moments(g, level, self.data, self.max_samples, self.device)
            g = g.with_updates(self._corrected(g, level, measured))
        return g

    def _corrected(self, g: ModelGraph, level: Sequence[str], measured: Mapping[str, Moments]
                   ) -> dict[str, torch.Tensor]:
        nodes = {n.name: n for n in g.module.graph.nodes}
        out = {}
        for name in level:
            target = str(nodes[name].target)
            weight, bias = f"{target}.weight", f"{target}.bias"
            (mean, std), (want_mean, want_std) = measured[name], self.targets[name]
            scale = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), want_std / std.clamp_min(1e-30),
                                torch.ones_like(std))
            w = g.params[weight]
            out[weight] = (w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
            if bias in g.params:
                b = g.params[bias]
                out[bias] = ((b.double() - mean) * scale + want_mean).to(b.dtype)
        return out


def layer_moments(g: ModelGraph, nodes: Sequence[str], data: Iterable, max_samples: int | None,
                  device: torch.device | str | None = None) -> dict[str, Moments]:
    """Per node, the mean and standard deviation of each channel of its output (the channel dim the lifter found;
    every other position counts as a sample) over the first ``max_samples`` samples of ``data``."""
    return {name: (mean, var.clamp_min(0).sqrt()) for name, (mean, var) in
            _moments(g, nodes, data, max_samples, device, full=False).items()}


def layer_covariances(g: ModelGraph, nodes: Sequence[str], data: Iterable, max_samples: int | None,
                      device: torch.device | str | None = None) -> dict[str, Moments]:
    """Per node, the mean (``d``) and covariance (``d x d``) of its output's channels, as ``layer_moments``."""
    return _moments(g, nodes, data, max_samples, device, full=True)


def _moments(g: ModelGraph, nodes: Sequence[str], data: Iterable, max_samples: int | None,
             device: torch.device | str | None, full: bool) -> dict[str, Moments]:
    tap = tap_module(g, list(nodes))
    home = next(iter(g.params.values())).device
    if device is not None:
        tap.to(device)
    dims = [g.facts[n].channel_dim for n in nodes]
    sums: list[torch.Tensor | float] = [0.0] * len(nodes)
    squares: list[torch.Tensor | float] = [0.0] * len(nodes)
    count = [0] * len(nodes)
    seen = 0
    with torch.no_grad():
        for batch in data:
            x = model_input(batch, input_names(tap))
            if max_samples is not None:
                if seen >= max_samples:
                    break
                x = x[:max_samples - seen]
            outs = tap(*x.to(device if device is not None else home))
            for i, (out, dim) in enumerate(zip(outs, dims, strict=True)):
                at = dim if dim is not None else -1
                flat = out.detach().double().movedim(at, -1).reshape(-1, out.shape[at])
                sums[i] = sums[i] + flat.sum(0)
                squares[i] = squares[i] + (flat.T @ flat if full else flat.square().sum(0))
                count[i] += flat.shape[0]
            seen += x.samples
    if not seen:
        raise PassError(f"{g.name}: no calibration batches to measure layer statistics on")
    out = {}
    for name, s, q, n in zip(nodes, sums, squares, count, strict=True):
        assert isinstance(s, torch.Tensor) and isinstance(q, torch.Tensor)
        mean = (s / n).cpu()
        out[name] = (mean, q.cpu() / n - (torch.outer(mean, mean) if full else mean.square()))
    return out
