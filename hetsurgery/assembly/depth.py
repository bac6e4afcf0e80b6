"""A donor brought to the base's depth and onto the base's names, so that each base unit has one counterpart.

The base is always the anchor: its structure never changes. Stage ``i`` of the donor meets stage ``i`` of the
base. Where they have as many units, unit ``j`` meets unit ``j``. Where they do not (``depth=`` names a depth
method), the stage pair is aligned on linear CKA (``merging.similarity``, ``plan.depth``: CLA, SMA, LMA) and the
donor's stage is balanced to the base's, by merge's balancing (``merging.balance``) where merge has the step:

- **donor shallower** (balance ``add``): identity layers (``InsertIdentity``) or zero-residual blocks
  (``InsertZeroResidual``) are inserted into the donor where the plan says. Both are exact; into a post-norm
  stack (BERT) go post-norm blocks (``InsertPostNormBlock``), approximately the identity, so the donor's later
  units are aligned on features that differ from its own by that approximation. A base unit that meets an
  inserted unit has no counterpart: the donor holds nothing there to absorb.
- **donor deeper** (balance ``merge``): every segment of donor units that meets one base unit becomes one
  unit. Layers are fused across their ReLUs (``FuseReluSegment``, CLAFusion's "merge layers", with the signs
  estimated on the data: an approximation; ``merging.balance``, as merge fuses). Residual blocks cannot be fused; all but one block of the segment
  are removed (``RemoveBlock``): the block kept is the one whose branch carries the largest share of its
  stream on the data (``branch_share``), so removal costs the least; a zero-residual block costs nothing.

The balanced donor is then carried onto the base's structure and names (``correspond.on_anchor_names``),
which checks unit by unit that the two compute the same kind of thing.

>>> import torch, hetsurgery as hs
>>> x = torch.randn(64, 64)
>>> base = hs.trace(hs.zoo.mlp([16, 16]), x[:2])
>>> donor = hs.trace(hs.zoo.mlp([24, 24, 24]), x[:2])
>>> b = balance_donor(base, donor, [x], DepthOptions.of("lma", "add", "cka", "sign_of_sum"), device=None)
>>> sorted(c.how.value for c in b.counterparts.values()), b.graph.params["layers.0.weight"].shape
(['depth plan', 'fused', 'same position'], torch.Size([24, 64]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from hetsurgery.errors import MergeInputError, PassError
from hetsurgery.ir import ModelGraph, UnitKind
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.merging.balance import check_pairable, check_same_depth, fuse_segment, insert_units
from hetsurgery.merging.correspond import on_anchor_names
from hetsurgery.merging.depth_options import DepthCost, DepthOptions
from hetsurgery.merging.similarity import StagePair, stage_scores
from hetsurgery.passes import Pipeline, RemoveBlock, specs
from hetsurgery.plan.depth import Balance, DepthPlan, ModelDepth, StageAlignment, align_stage
from hetsurgery.plan.depth.depth_plan import Score
from hetsurgery.plan.joint import tap_module


class Found(Enum):
    """How a base unit's counterpart in the donor was found."""

    SAME_POSITION = "same position"  # the stage has as many units in both
    DEPTH_PLAN = "depth plan"  # a depth plan paired it
    FUSED = "fused"  # a segment of the donor's layers, fused into one
    KEPT = "kept"  # one block of a segment of the donor's blocks, the others removed
    INSERTED = "inserted"  # an identity unit the depth plan inserted: nothing to absorb


# a unit of the balanced donor: its original units, how they were found, and what else happened (KEPT: removals)
Sources = dict[str, tuple[tuple[str, ...], Found, str]]

__all__ = ["BalancedDonor", "Counterpart", "DepthOptions", "balance_donor", "branch_share"]


@dataclass(frozen=True)
class Counterpart:
    """What meets base unit ``base`` in the donor: its original unit keys (several when fused, none when the
    unit was inserted) and how they were found."""

    base: str
    donor: tuple[str, ...]
    how: Found
    detail: str = ""  # KEPT: the blocks removed beside it, with their branch shares

    def describe(self) -> str:
        """``how`` in words, with ``detail``: ``kept, removed layer1_1_conv1 (branch 0)``."""
        return self.how.value + self.detail

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


def balance_donor(base: ModelGraph, donor: ModelGraph, data: Iterable | None, opts: DepthOptions | None, *,
                  device: torch.device | str | None) -> BalancedDonor:
    """``donor`` balanced to ``base``'s depth (``opts``: the depth method; ``None`` when depths agree) and
    carried onto its names."""
    if opts is None:
        check_same_depth([base, donor], "give depth='lma', 'sma' or 'cla' to align its units with the base's by a "
                                        "depth plan")
        return _carried(base, donor, donor, _sources(donor, set()), None)
    check_pairable([base, donor])
    differ = [(a, b) for a, b in zip(base.stages, donor.stages, strict=True) if len(a) != len(b)]
    # (shallow, deep) per differing stage: the donor is the shallow side (units are inserted into it) or the deep
    # one (its segments become single units); graphs[0] is the base, graphs[1] the donor
    sides = [((1, b), (0, a)) if len(b) < len(a) else ((0, a), (1, b)) for a, b in differ]
    pairs = [StagePair(s, d, s_st.key, d_st.key) for (s, s_st), (d, d_st) in sides]
    scores = stage_scores([base, donor], pairs, data, opts, device=device)
    kind = Score.WIDTH if opts.cost is DepthCost.WIDTH else None
    stages = [align_stage(s_st.key, d_st.key, s_st.units, d_st.units, m, opts.method,
                          Balance.ADD if s == 1 else Balance.MERGE, kind)
              for ((s, s_st), (_, d_st)), m in zip(sides, scores, strict=True)]
    sources = _sources(donor, {u for _, b in differ for u in b.units})
    balanced = _shrink(donor, [s for s in stages if s.balance is Balance.MERGE], data, opts, sources)
    balanced = insert_units(balanced, [s for s in stages if s.balance is Balance.ADD], base.name)
    plan = DepthPlan(0, (ModelDepth(1, tuple(stages), _new_passes(donor, balanced)),)) if stages else None
    return _carried(base, donor, balanced, sources, plan)


def _new_passes(donor: ModelGraph, balanced: ModelGraph) -> tuple[Mapping[str, Any], ...]:
    return tuple(specs(balanced.passes[len(donor.passes):]))  # a history only grows


def _sources(donor: ModelGraph, planned: set[str]) -> Sources:
    """Each donor unit as its own source, found by position or (``planned``) by the depth plan."""
    return {u.key: ((u.key,), Found.DEPTH_PLAN if u.key in planned else Found.SAME_POSITION, "") for u in donor.units}


def _carried(base: ModelGraph, donor: ModelGraph, balanced: ModelGraph,
             sources: Sources, plan: DepthPlan | None) -> BalancedDonor:
    carried = on_anchor_names(base, balanced)  # pairs balanced.units[i] with base.units[i]
    counterparts = {}
    for mine, theirs in zip(base.units, balanced.units, strict=True):
        keys, how, detail = sources.get(theirs.key, ((), Found.INSERTED, ""))
        counterparts[mine.key] = Counterpart(mine.key, keys, how, detail)
    return BalancedDonor(carried, plan, counterparts, _new_passes(donor, balanced))


def _shrink(g: ModelGraph, stages: Sequence[StageAlignment], data: Iterable | None, opts: DepthOptions,
            sources: Sources) -> ModelGraph:
    """Each multi-unit segment of the donor's deeper stages becomes one unit (``sources`` records which)."""
    removed: list[str] = []
    for sa in stages:
        segments = [tuple(sa.units_deep[j] for j in seg) for seg in sa.segments if len(seg) > 1]
        if g.stage(sa.stage_deep).kind is UnitKind.LAYER:
            for seg in segments:
                g = fuse_segment(g, seg, data, opts.estimator)
                sources[seg[-1]] = (seg, Found.FUSED, "")
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
            sources[keep] = ((keep,), Found.KEPT, (" (it changes the stream's shape), removed " if fixed else ", removed ")
                             + ", ".join(f"{u} (branch {share[u]:.3g})" for u in others))
    if removed:
        try:
            g = Pipeline((RemoveBlock(tuple(removed)),))(g)
        except PassError as exc:
            raise MergeInputError(f"{g.name} cannot be made as shallow as the base: {exc}") from exc
    return g


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
