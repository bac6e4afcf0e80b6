"""Depth alignment inside ``merge``: unit similarity, the depth plan, balancing, and the correspondence.

1. **Similarity.** Every model runs once over the first ``depth_samples`` calibration samples (512 by
   default: linear CKA over every position of 512 images settles well before that, and the width plan's own
   pass over all the data is the expensive one) beside the anchor; linear CKA between each of its units and
   each unit of the anchor's corresponding stage is streamed (``similarity.stage_scores``); CLA with
   ``depth_cost="width"`` compares widths instead and needs no data. Where it can, the same forward passes
   gather the width statistics of those samples for every pairing the plan may choose (``merging.one_pass``),
   and the statistics pass goes on from the next sample.
2. **Plan.** Stage ``i`` of a model is aligned with stage ``i`` of the anchor (CLA / SMA / LMA,
   ``plan.depth``). With ``balance="add"`` the anchor is the deepest model and the others get units
   inserted; with ``balance="merge"`` it is the shallowest and the others have segments fused. Between
   models of equal depth the widest is the anchor (the most channels over its permutable groups: it
   loses the least when the others are carried onto its structure), then the first; ``depth_anchor=``
   names it instead (it must then be the deepest, or shallowest, in every stage).
3. **Balance.** ``InsertIdentity`` / ``InsertZeroResidual`` (exact), ``InsertPostNormBlock`` (post-norm blocks,
   approximately the identity) or ``FuseReluSegment`` with signs estimated on the calibration data (the
   approximations measured in the report), through ``balance``, which assembly uses too; whether the balance
   can work is asked first, before any data is read.
4. **Correspondence.** Each balanced model is carried onto the anchor's structure and names
   (``correspond.on_anchor_names``), unit by unit; the width methods then see models of one topology.

**Where a self-merge is exact.** A model D′ merged (``balance="add"``, ``permute``, no BatchNorm reset) with a
permuted copy of itself that lacks a unit computing the identity is D′ again when the plan puts the identity
back where it was: SMA and LMA do unless the missing unit is a stage's first (a unit is never inserted in
front of it); CLA also fixes last↔last (for two or more shallow units), so it does unless the missing unit is
a stage's first or last (``tests/test_depth_merge.py::test_self_merge_certificate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph
from hetsurgery.merging.balance import check_balance, check_pairable, fuse_segment, insert_units
from hetsurgery.merging.correspond import on_anchor_names
from hetsurgery.merging.depth_options import DepthCost, DepthOptions
from hetsurgery.merging.fusion import FuseReport, InsertReport, compare, measure
from hetsurgery.merging.similarity import Extra, StagePair, stage_scores
from hetsurgery.passes import InsertPostNormBlock, specs
from hetsurgery.plan.depth import Balance, DepthPlan, ModelDepth, StageAlignment
from hetsurgery.plan.depth.depth_plan import Score, align_stage


@dataclass(frozen=True)
class Balanced:
    """The models balanced and carried onto the anchor's names, the plan, what it cost."""

    graphs: tuple[ModelGraph, ...]
    plan: DepthPlan
    seconds: dict[str, float]
    fusions: tuple[FuseReport | InsertReport, ...] = field(default=())  # what approximate balancing cost
    own: tuple[ModelGraph, ...] = field(default=(), repr=False)  # the balanced models on their own names
    gathered: Extra | None = field(default=None, repr=False)  # what else the similarity pass fed


def balance_depths(graphs: Sequence[ModelGraph], data: Iterable | None, opts: DepthOptions, *,
                   device: torch.device | str | None, progress: bool,
                   gather: Callable[[int], Extra] | None = None) -> Balanced:
    """Align every model's stages with the anchor's, balance them, and carry them onto the anchor's names.
    ``gather`` (given the anchor's index) makes what else reads the similarity pass's forward passes
    (``merging.one_pass``)."""
    check_pairable(graphs)
    anchor = _anchor(graphs, opts.balance, opts.anchor)
    check_balance(graphs, anchor, opts.balance)
    seconds = {}
    clock = time.perf_counter()
    others = [k for k in range(len(graphs)) if k != anchor]
    pairs = [StagePair(*_roles(k, anchor, opts.balance), st.key, st.key) for k in others for st in graphs[k].stages]
    extra = gather(anchor) if gather is not None else None
    matrices = iter(stage_scores(graphs, pairs, data, opts, device=device, progress=progress, extra=extra))
    scores = {k: {st.key: next(matrices) for st in graphs[k].stages} for k in others}
    seconds["similarity"] = time.perf_counter() - clock
    clock = time.perf_counter()
    plan = _plan(graphs, anchor, scores, opts)
    seconds["depth_plan"] = time.perf_counter() - clock
    clock = time.perf_counter()
    balanced, reports = _balance(graphs, anchor, plan, data, opts)
    carried = tuple(g if k == anchor else on_anchor_names(balanced[anchor], g) for k, g in enumerate(balanced))
    seconds["balance"] = time.perf_counter() - clock
    plan = replace(plan, models=tuple(replace(md, passes=tuple(specs(balanced[md.model].passes)))
                                      for md in plan.models))
    return Balanced(carried, plan, seconds, tuple(reports), tuple(balanced), extra)


def _anchor(graphs: Sequence[ModelGraph], balance: Balance, given: int | None = None) -> int:
    """``add``: the deepest model (it keeps its units); ``merge``: the shallowest; among those the widest
    (``width``), then the first; or the ``given`` one. Every stage must agree.

    >>> import torch, hetsurgery as hs
    >>> x = torch.randn(2, 64)
    >>> gs = [hs.trace(hs.zoo.mlp(h), x) for h in ([8, 8], [8, 8, 8], [16, 16, 16], [4])]
    >>> _anchor(gs, Balance.ADD), _anchor(gs, Balance.MERGE), _anchor(gs, Balance.ADD, given=1)
    (2, 3, 1)
    """
    if given is not None:
        if given >= len(graphs):
            raise MergeInputError(f"depth_anchor {given} is not one of the {len(graphs)} models")
        k = given
    else:
        sign = 1 if balance is Balance.ADD else -1
        k = max(range(len(graphs)), key=lambda i: (sign * len(graphs[i].units), width(graphs[i]), -i))
    for g in graphs:
        for a, b in zip(graphs[k].stages, g.stages, strict=True):
            if (len(b) > len(a)) if balance is Balance.ADD else (len(b) < len(a)):
                side = "deeper" if balance is Balance.ADD else "shallower"
                which = (f"the depth anchor you chose (depth_anchor={given})" if given is not None else
                         f"the {side.replace('er', 'est')} model overall")
                raise MergeInputError(f"{g.name} is {side} than {graphs[k].name} in {a.key} ({len(b)} against "
                                      f"{len(a)} units): every model is balanced to one anchor, {which}, which must "
                                      f"be the {side.replace('er', 'est')} in every stage")
    return k


def width(g: ModelGraph) -> int:
    """The channels of ``g``'s permutable groups, all together: how wide a model is."""
    return sum(grp.size for grp in g.permutable())


def _roles(k: int, anchor: int, balance: Balance) -> tuple[int, int]:
    """(shallow, deep) model indices of the pair (model ``k``, anchor)."""
    return (k, anchor) if balance is Balance.ADD else (anchor, k)


def _plan(graphs: Sequence[ModelGraph], anchor: int, scores: dict[int, dict[str, torch.Tensor]],
          opts: DepthOptions) -> DepthPlan:
    kind = Score.WIDTH if opts.cost is DepthCost.WIDTH else None
    models = []
    for k, per_stage in scores.items():
        shallow, deep = _roles(k, anchor, opts.balance)
        stages: list[StageAlignment] = []
        for st in graphs[k].stages:
            s, d = graphs[shallow].stage(st.key), graphs[deep].stage(st.key)
            stages.append(align_stage(s.key, d.key, s.units, d.units, per_stage[st.key], opts.method, opts.balance,
                                      kind))
        models.append(ModelDepth(k, tuple(stages)))
    return DepthPlan(anchor, tuple(models))


def _balance(graphs: Sequence[ModelGraph], anchor: int, plan: DepthPlan, data: Iterable | None, opts: DepthOptions
             ) -> tuple[list[ModelGraph], list[FuseReport | InsertReport]]:
    out = list(graphs)
    reports: list[FuseReport | InsertReport] = []
    for md in plan.models:
        g = graphs[md.model]
        if opts.balance is Balance.ADD:
            out[md.model] = insert_units(g, md.stages, graphs[anchor].name)
            if data is not None and any(isinstance(q, InsertPostNormBlock) for q in out[md.model].passes):
                had = {u.key for u in g.units}
                reports.append(InsertReport(g.name, tuple(u.key for u in out[md.model].units if u.key not in had),
                                            *measure(g, out[md.model], data)))
            continue
        for sa in md.stages:
            for fusion in sa.fusions:
                units = tuple(sa.units_deep[j] for j in fusion.deep)
                fused = fuse_segment(g, units, data, opts.estimator)
                assert data is not None  # fuse_segment refuses without
                reports.append(compare(g, fused, data, units, opts.estimator))
                g = fused
        out[md.model] = g
    return out, reports


