"""A donor brought to the base's depth and onto the base's names, so that each base unit has one counterpart.

The base is always the anchor: its structure never changes. Stage ``i`` of the donor meets stage ``i`` of the
base. Where they have as many units, unit ``j`` meets unit ``j``. Where they do not (``depth=`` names a depth
method), the stage pair is aligned on linear CKA (``plan.depth``: CLA, SMA, LMA) and the donor's stage is
balanced to the base's:

- **donor shallower** (balance ``add``): identity layers (``InsertIdentity``) or zero-residual blocks
  (``InsertZeroResidual``) are inserted into the donor where the plan says. Both are exact. A base unit that
  meets an inserted unit has no counterpart: the donor holds nothing there to absorb.
- **donor deeper** (balance ``merge``): every segment of donor units that meets one base unit becomes one
  unit. Layers are fused across their ReLUs (``FuseReluSegment``, CLAFusion's "merge layers", with the signs
  estimated on the data: an approximation). Residual blocks cannot be fused; all but one block of the segment
  are removed (``RemoveBlock``): the block kept is the one whose branch carries the largest share of its
  stream on the data (``branch_share``), so removal costs the least; a zero-residual block costs nothing.

The balanced donor is then carried onto the base's structure and names (``correspond.on_anchor_names``),
which checks unit by unit that the two compute the same kind of thing.

>>> import torch, hetsurgery as hs
>>> x = torch.randn(64, 64)
>>> base = hs.trace(hs.zoo.mlp([16, 16]), x[:2])
>>> donor = hs.trace(hs.zoo.mlp([24, 24, 24]), x[:2])
>>> b = balance_donor(base, donor, [x], DepthOptions.of("lma", "add", "cka", "sign_of_sum"), device=None)
>>> sorted(c.how for c in b.counterparts.values()), b.graph.params["layers.0.weight"].shape
(['depth plan', 'fused', 'same position'], torch.Size([24, 64]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hetsurgery.errors import MergeInputError, PassError
from hetsurgery.ir import ModelGraph, Site, UnitKind
from hetsurgery.ir.batches import Inputs, input_names, model_input
from hetsurgery.merge.correspond import on_anchor_names
from hetsurgery.merge.depth import DepthOptions, check_pairable
from hetsurgery.passes import FuseReluSegment, InsertIdentity, InsertZeroResidual, Pipeline, RemoveBlock
from hetsurgery.plan.depth import (
    Balance,
    DepthMethod,
    DepthPlan,
    ModelDepth,
    StageAlignment,
    StreamingCKA,
    align_stage,
)
from hetsurgery.plan.depth.cka import width_cost
from hetsurgery.plan.depth.depth_plan import Score
from hetsurgery.plan.fuse_signs import estimate_signs
from hetsurgery.plan.joint import site_view, tap_module

Sources = dict[str, tuple[tuple[str, ...], str]]  # a unit of the balanced donor: its original units, how found

__all__ = ["BalancedDonor", "Counterpart", "DepthOptions", "balance_donor", "branch_share", "check_same_depth"]


@dataclass(frozen=True)
class Counterpart:
    """What meets base unit ``base`` in the donor: its original unit keys (several when fused, none when the
    unit was inserted) and how they were found."""

    base: str
    donor: tuple[str, ...]
    how: str  # "same position", "depth plan", "fused", "kept, removed …", "inserted"

    @property
    def exists(self) -> bool:
        return bool(self.donor)


@dataclass(frozen=True)
class BalancedDonor:
    """The donor on the base's structure and names, its depth plan (``None`` when no stage differed), and the
    counterpart of every base unit, by base unit key."""

    graph: ModelGraph
    plan: DepthPlan | None
    counterparts: Mapping[str, Counterpart]
    passes: tuple[Mapping[str, Any], ...] = field(default=())


def check_same_depth(base: ModelGraph, donor: ModelGraph) -> None:
    """Without ``depth=`` every stage (and the units outside stages) must agree; say where they do not."""
    check_pairable([base, donor])
    differ = [f"{a.key}: {len(a)} {a.kind.value}s in the base, {len(b)} in {donor.name}"
              for a, b in zip(base.stages, donor.stages, strict=True) if len(a) != len(b)]
    if differ or len(base.units) != len(donor.units):
        where = "; ".join(differ) or f"{len(base.units)} units in the base, {len(donor.units)} in {donor.name}"
        raise MergeInputError(f"{donor.name} differs in depth from the base ({where}): give depth='lma', 'sma' or "
                              "'cla' to align its units with the base's by a depth plan")


def balance_donor(base: ModelGraph, donor: ModelGraph, data: Iterable | None, opts: DepthOptions | None, *,
                  device: torch.device | str | None) -> BalancedDonor:
    """``donor`` balanced to ``base``'s depth (``opts``: the depth method; ``None`` when depths agree) and
    carried onto its names."""
    if opts is None:
        check_same_depth(base, donor)
        return _carried(base, donor, donor, _sources(donor, set()), None)
    check_pairable([base, donor])
    differ = [(a, b) for a, b in zip(base.stages, donor.stages, strict=True) if len(a) != len(b)]
    scores = _scores(base, donor, [a.key for a, _ in differ], data, opts, device)
    stages: list[StageAlignment] = []
    for a, b in differ:
        kind = Score.WIDTH if opts.cost == "width" else None
        if len(b) < len(a):  # the donor is the shallow side: units are inserted into it
            stages.append(align_stage(b.key, a.key, b.units, a.units, scores[a.key], opts.method, Balance.ADD, kind))
        else:  # the base is the shallow side: the donor's segments become single units
            stages.append(align_stage(a.key, b.key, a.units, b.units, scores[a.key], opts.method, Balance.MERGE, kind))
    plan = DepthPlan(0, (ModelDepth(1, tuple(stages)),)) if stages else None
    sources = _sources(donor, {u for _, b in differ for u in b.units})
    balanced = _shrink(donor, [s for s in stages if s.balance is Balance.MERGE], data, opts, sources)
    balanced = _grow(balanced, [s for s in stages if s.balance is Balance.ADD])
    return _carried(base, donor, balanced, sources, plan)


def _sources(donor: ModelGraph, planned: set[str]) -> Sources:
    """Each donor unit as its own source, found by position or (``planned``) by the depth plan."""
    return {u.key: ((u.key,), "depth plan" if u.key in planned else "same position") for u in donor.units}


def _carried(base: ModelGraph, donor: ModelGraph, balanced: ModelGraph,
             sources: Sources, plan: DepthPlan | None) -> BalancedDonor:
    carried = on_anchor_names(base, balanced)  # pairs balanced.units[i] with base.units[i]
    counterparts = {}
    for mine, theirs in zip(base.units, balanced.units, strict=True):
        keys, how = sources.get(theirs.key, ((), "inserted"))
        counterparts[mine.key] = Counterpart(mine.key, keys, how)
    return BalancedDonor(carried, plan, counterparts, tuple(p for p in balanced.passes if p not in donor.passes))


def _scores(base: ModelGraph, donor: ModelGraph, keys: Sequence[str], data: Iterable | None, opts: DepthOptions,
            device: torch.device | str | None) -> dict[str, torch.Tensor]:
    """Per differing stage: the (shallow side's units x deep side's units) score matrix (CLA: a cost)."""
    if not keys:
        return {}
    donor_shallow = {key for key in keys if len(donor.stage(key)) < len(base.stage(key))}
    sides = {key: (donor, base) if key in donor_shallow else (base, donor) for key in keys}  # (shallow, deep)
    pairs = {key: (s.stage(key).units, d.stage(key).units) for key, (s, d) in sides.items()}
    if opts.cost == "width":
        return {key: torch.as_tensor(width_cost(_widths(s, pairs[key][0], opts), _widths(d, pairs[key][1], opts)),
                                     dtype=torch.float64) for key, (s, d) in sides.items()}
    if data is None:
        raise MergeInputError(f"depth={opts.method.value!r} compares the units of the base and the donor on data; "
                              "give data (or depth='cla' with depth_cost='width')")
    # a unit key may be the base's and the donor's at once: one accumulator per orientation
    cka_d = StreamingCKA({k: pairs[k] for k in keys if k in donor_shallow}) if donor_shallow else None
    cka_b = StreamingCKA({k: pairs[k] for k in keys if k not in donor_shallow}) \
        if set(keys) - donor_shallow else None
    for fa, fb in _features(base, donor, keys, data, opts, device):
        if cka_d is not None:
            cka_d.add(fb, fa)
        if cka_b is not None:
            cka_b.add(fa, fb)
    out = {}
    for key in keys:
        cka = cka_d if key in donor_shallow else cka_b
        assert cka is not None
        m = cka.matrix(key)
        out[key] = 1.0 - m if opts.method is DepthMethod.CLA else m
    return out


def _widths(g: ModelGraph, units: Sequence[str], opts: DepthOptions) -> list[int]:
    out = []
    for u in units:
        f = g.facts[_feature_node(g, u, opts)]
        out.append(f.shape[f.channel_dim] if f.shape is not None and f.channel_dim is not None else 0)
    return out


def _feature_node(g: ModelGraph, unit: str, opts: DepthOptions) -> str:
    u = g.unit(unit)
    return u.pre if opts.method is DepthMethod.CLA else u.exit


def _features(base: ModelGraph, donor: ModelGraph, keys: Sequence[str], data: Iterable, opts: DepthOptions,
              device: torch.device | str | None) -> Iterable[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Per batch (up to ``opts.samples`` samples): each model's unit features of the differing stages."""
    taps = [_Tap.of(g, [u for k in keys for u in g.stage(k).units], opts, device) for g in (base, donor)]
    target = device if device is not None else next(iter(base.params.values())).device
    seen = 0
    with torch.no_grad():
        for batch in data:
            if opts.samples is not None and seen >= opts.samples:
                return
            x = model_input(batch, input_names(taps[0].module)).to(target)
            x = x if opts.samples is None else x[:opts.samples - seen]
            seen += x.samples
            yield taps[0].features(x), taps[1].features(x)


@dataclass(frozen=True)
class _Tap:
    """A copy of a model that returns the feature node of each of ``units``, as ``(A, C, M)`` views."""

    module: torch.fx.GraphModule
    units: tuple[str, ...]
    sites: tuple[Site, ...]

    @staticmethod
    def of(g: ModelGraph, units: Sequence[str], opts: DepthOptions, device: torch.device | str | None) -> _Tap:
        nodes = [_feature_node(g, u, opts) for u in units]
        sites = tuple(Site(n, _channel_dim(g, n)) for n in nodes)
        tap = tap_module(g, nodes)
        return _Tap(tap.to(device) if device is not None else tap, tuple(units), sites)

    def features(self, x: Inputs) -> dict[str, torch.Tensor]:
        outs = self.module(*x)
        return {u: site_view(out, s, out.shape[s.dim]) for u, s, out in zip(self.units, self.sites, outs, strict=True)}


def _channel_dim(g: ModelGraph, node: str) -> int:
    f = g.facts[node]
    if f.channel_dim is not None:
        return f.channel_dim
    rank = len(f.shape or ())
    return 1 if rank > 2 else max(rank - 1, 0)


def _grow(g: ModelGraph, stages: Sequence[StageAlignment]) -> ModelGraph:
    passes = []
    for sa in stages:
        at = tuple(ins.after + 1 for ins in sa.insertions for _ in range(ins.count))
        kind = g.stage(sa.stage_shallow).kind
        passes.append(InsertIdentity(sa.stage_shallow, at) if kind is UnitKind.LAYER
                      else InsertZeroResidual(sa.stage_shallow, at))
    try:
        return Pipeline(tuple(passes))(g)
    except PassError as exc:
        raise MergeInputError(f"{g.name} cannot be made as deep as the base: {exc}. Try another depth method") from exc


def _shrink(g: ModelGraph, stages: Sequence[StageAlignment], data: Iterable | None, opts: DepthOptions,
            sources: Sources) -> ModelGraph:
    """Each multi-unit segment of the donor's deeper stages becomes one unit (``sources`` records which)."""
    removed: list[str] = []
    for sa in stages:
        segments = [tuple(sa.units_deep[j] for j in seg) for seg in sa.segments if len(seg) > 1]
        if g.stage(sa.stage_deep).kind is UnitKind.LAYER:
            for seg in segments:
                g = _fuse(g, seg, data, opts)
                sources[seg[-1]] = (seg, "fused")
            continue
        # a fixed block (strided, a projection shortcut) changes the stream's shape: it stays, the others go
        free = [u for seg in segments for u in seg if g.unit(u).fixed is None]
        share = branch_share(g, free, data if data is not None else [g.example_inputs[0]])
        for seg in segments:
            fixed = [u for u in seg if g.unit(u).fixed is not None]
            keep = fixed[0] if fixed else max(seg, key=lambda u: share[u])
            others = [u for u in seg if u != keep]
            if any(g.unit(u).fixed is not None for u in others):
                raise MergeInputError(f"{g.name} cannot be made as shallow as the base: its blocks {', '.join(fixed)} "
                                      "change the stream's shape and would all have to stay in one unit of the base")
            removed += others
            sources[keep] = ((keep,), ("kept (it changes the stream's shape), removed " if fixed else "kept, removed ")
                             + ", ".join(f"{u} (branch {share[u]:.3g})" for u in others))
    if removed:
        try:
            g = Pipeline((RemoveBlock(tuple(removed)),))(g)
        except PassError as exc:
            raise MergeInputError(f"{g.name} cannot be made as shallow as the base: {exc}") from exc
    return g


def _fuse(g: ModelGraph, units: tuple[str, ...], data: Iterable | None, opts: DepthOptions) -> ModelGraph:
    if data is None:
        raise MergeInputError(f"{g.name} is deeper than the base: its layers {', '.join(units)} are fused across their "
                              "ReLUs with signs estimated on data; give data")
    try:
        return Pipeline((FuseReluSegment(units, estimate_signs(g, units, data, opts.estimator)),))(g)
    except PassError as exc:
        raise MergeInputError(f"{g.name} is deeper than the base, and its layers {', '.join(units)} cannot be fused "
                              f"into one: {exc}") from exc


def branch_share(g: ModelGraph, keys: Sequence[str], data: Iterable) -> dict[str, float]:
    """Per residual block of ``keys``: ``‖exit − entry‖ / ‖entry‖`` over ``data``, how much the block changes its
    stream (0 for a zero-residual block), which is what removing it changes.

    >>> import torch, hetsurgery as hs
    >>> from hetsurgery.passes import InsertZeroResidual
    >>> g = InsertZeroResidual("stage0", (1,))(hs.trace(hs.zoo.resnet((1, 1, 1)), torch.randn(2, 1, 8, 8)))
    >>> {k: round(v, 3) for k, v in branch_share(g, g.stage("stage0").units, [torch.randn(8, 1, 8, 8)]).items()}
    ... # doctest: +ELLIPSIS
    {'layer1_0_conv1': ..., 'layer1_1_conv1': 0.0}
    """
    if not keys:
        return {}
    units = [g.unit(k) for k in keys]
    tap = tap_module(g, [n for u in units for n in (u.entry, u.exit)])
    diff = torch.zeros(len(units), dtype=torch.float64)
    norm = torch.zeros(len(units), dtype=torch.float64)
    with torch.no_grad():
        for batch in data:
            outs = tap(*model_input(batch, input_names(tap)))
            for i in range(len(units)):
                entry, exit_ = outs[2 * i].double(), outs[2 * i + 1].double()
                diff[i] += (exit_ - entry).square().sum()
                norm[i] += entry.square().sum()
    return {u.key: float((diff[i] / norm[i].clamp_min(1e-30)).sqrt()) for i, u in enumerate(units)}
