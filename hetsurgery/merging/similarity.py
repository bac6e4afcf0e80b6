"""How alike the units of two stages are: the score matrices a depth plan is solved on, for merge and assembly.

Every graph runs once over the first ``samples`` calibration samples (``DepthOptions.samples``; all of them
with ``None``), through a tap that returns each needed unit's features (``UnitTap``): CLA compares
pre-activations (``Unit.pre``), SMA and LMA unit outputs (``Unit.exit``). Linear CKA between the units of each
stage pair is streamed (``StreamingCKA``: no activation is stored). CLA minimises a cost, so its matrices are
``1 − CKA``; with ``cost="width"`` they are CLAFusion's data-free width cost and no data is read. What else reads the
pass (``Extra``: a depth merge's one pass, ``merging.one_pass``) gets the outputs of the nodes it names, and where it
gathers the units' outputs' moments itself, SMA's and LMA's matrices are made of them.

>>> import torch, hetsurgery as hs
>>> from hetsurgery.merging.depth_options import DepthOptions
>>> x = torch.randn(64, 64)
>>> gs = [hs.trace(hs.zoo.mlp(h), x[:2]) for h in ([16, 16, 16], [16])]
>>> opts = DepthOptions.of("lma", "add", "cka", "sign_of_sum")
>>> [tuple(m.shape) for m in stage_scores(gs, [StagePair(1, 0, "stage0", "stage0")], [x], opts)]
[(1, 3)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph, Site
from hetsurgery.ir.batches import Inputs, Resumable, input_names, model_input, with_progress
from hetsurgery.merging.depth_options import DepthCost, DepthOptions
from hetsurgery.plan.depth import DepthMethod, StreamingCKA
from hetsurgery.plan.depth.cka import width_cost
from hetsurgery.plan.joint import site_view, tap_module


@dataclass(frozen=True)
class StagePair:
    """Stage ``stage_shallow`` of ``graphs[shallow]`` (the rows) against ``stage_deep`` of ``graphs[deep]``."""

    shallow: int
    deep: int
    stage_shallow: str
    stage_deep: str


def feature_node(g: ModelGraph, unit: str, method: DepthMethod) -> str:
    """The node whose output stands for ``unit``: its pre-activation for CLA, its output for SMA and LMA."""
    u = g.unit(unit)
    return u.pre if method is DepthMethod.CLA else u.exit


def channel_dim(g: ModelGraph, node: str) -> int:
    """The channel dim of ``node``'s output (a feature map's dim 1, else the last) where the lifter left none."""
    f = g.facts[node]
    if f.channel_dim is not None:
        return f.channel_dim
    rank = len(f.shape or ())
    return 1 if rank > 2 else max(rank - 1, 0)


@dataclass(frozen=True)
class UnitTap:
    """A copy of a model that returns the feature node of each of ``units`` (as ``(A, C, M)`` views, ``features``)
    and the outputs of ``also``'s nodes."""

    module: torch.fx.GraphModule
    units: tuple[str, ...]
    sites: tuple[Site, ...]
    nodes: tuple[str, ...] = ()  # what the module returns, in order

    @staticmethod
    def of(g: ModelGraph, units: Sequence[str], method: DepthMethod, device: torch.device | str | None,
           also: Sequence[str] = ()) -> UnitTap:
        unit_nodes = [feature_node(g, u, method) for u in units]
        nodes = tuple(dict.fromkeys([*unit_nodes, *also]))
        tap = tap_module(g, nodes)
        return UnitTap(tap.to(device) if device is not None else tap, tuple(units),
                       tuple(Site(n, channel_dim(g, n)) for n in unit_nodes), nodes)

    def outputs(self, x: Inputs) -> dict[str, torch.Tensor]:
        """Every tapped node's output on ``x``, by node name."""
        return dict(zip(self.nodes, self.module(*x), strict=True))

    def features(self, outs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each unit's features in ``outputs``' result."""
        return {u: site_view(outs[s.node], s, outs[s.node].shape[s.dim]) for u, s in zip(self.units, self.sites,
                                                                                       strict=True)}


class Extra(Protocol):
    """What else reads the similarity pass's forward passes (``merging.one_pass.Gather``): the nodes of each model it
    needs, and each batch's outputs there; where it gathers the units' outputs' moments itself (``exits``), the
    unit similarities are made of them (``unit_scores``) and no separate CKA runs."""

    @property
    def exits(self) -> Mapping[int, Mapping[str, object]]: ...

    def nodes(self, model: int) -> list[str]: ...

    def add(self, outs: Mapping[int, Mapping[str, torch.Tensor]]) -> None: ...

    def unit_scores(self, pairs: Sequence[StagePair]) -> list[torch.Tensor]: ...


def stage_scores(graphs: Sequence[ModelGraph], pairs: Sequence[StagePair], data: Iterable | None,
                 opts: DepthOptions, *, device: torch.device | str | None = None, progress: bool = False,
                 extra: Extra | None = None) -> list[torch.Tensor]:
    """Per pair, the ``(shallow units x deep units)`` score matrix, every graph run once per batch. ``extra`` gets
    the outputs of the nodes it names on the same batches. When ``data`` is ``Resumable`` and the pass stops inside
    a batch, the rest of it is handed back."""
    units = [(graphs[p.shallow].stage(p.stage_shallow).units, graphs[p.deep].stage(p.stage_deep).units)
             for p in pairs]
    if opts.cost is DepthCost.WIDTH:
        return [torch.as_tensor(width_cost(_widths(graphs[p.shallow], s, opts.method),
                                           _widths(graphs[p.deep], d, opts.method)), dtype=torch.float64)
                for p, (s, d) in zip(pairs, units, strict=True)]
    if not pairs:
        return []
    if data is None:
        raise MergeInputError(f"depth={opts.method.value!r} compares the models' units on calibration data; give "
                              "data (or use depth='cla' with depth_cost='width')")
    # the units' outputs compared by what else reads the pass (SMA, LMA), or one CKA accumulator per orientation (a
    # stage key may be the rows of one pair and the columns of another)
    shared = extra is not None and opts.method is not DepthMethod.CLA and all(
        k in extra.exits for p in pairs for k in (p.shallow, p.deep))
    by_side: dict[tuple[int, int], dict[str, tuple[Sequence[str], Sequence[str]]]] = {}
    for i, (p, (s, d)) in enumerate(zip(pairs, units, strict=True)):
        by_side.setdefault((p.shallow, p.deep), {})[str(i)] = (s, d)
    cka = {} if shared else {side: StreamingCKA(keyed) for side, keyed in by_side.items()}
    needed: dict[int, list[str]] = {}
    for p, (s, d) in zip(pairs, units, strict=True):
        needed.setdefault(p.shallow, []).extend(() if shared else s)
        needed.setdefault(p.deep, []).extend(() if shared else d)
    taps = {k: UnitTap.of(graphs[k], list(dict.fromkeys(us)), opts.method, device,
                          extra.nodes(k) if extra is not None else ()) for k, us in needed.items()}
    target = device if device is not None else next(iter(graphs[0].params.values())).device
    seen = 0
    with torch.no_grad():
        for batch in with_progress(data, "unit similarity", progress):
            x = model_input(batch, input_names(graphs[0].module)).to(target)
            if opts.samples is not None and x.samples > opts.samples - seen:
                if isinstance(data, Resumable):
                    data.hand_back(x[opts.samples - seen:].tensors)
                x = x[:opts.samples - seen]
            seen += x.samples
            outs = {k: tap.outputs(x) for k, tap in taps.items()}
            feats = {k: tap.features(outs[k]) for k, tap in taps.items()}
            for (rows, cols), acc in cka.items():
                acc.add(feats[rows], feats[cols])
            if extra is not None:
                extra.add(outs)
            del outs, feats  # before the next batch's forward passes: one batch of features alive at a time
            if opts.samples is not None and seen >= opts.samples:
                break
    if shared:
        assert extra is not None
        return extra.unit_scores(pairs)
    out = [cka[(p.shallow, p.deep)].matrix(str(i)) for i, p in enumerate(pairs)]
    return [1.0 - m for m in out] if opts.method is DepthMethod.CLA else out  # CLA minimises a cost


def _widths(g: ModelGraph, units: Sequence[str], method: DepthMethod) -> list[int]:
    out = []
    for u in units:
        f = g.facts[feature_node(g, u, method)]
        out.append(f.shape[f.channel_dim] if f.shape is not None and f.channel_dim is not None else 0)
    return out
