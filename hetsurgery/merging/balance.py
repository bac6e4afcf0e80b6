"""Depth balancing, the one implementation merge and assembly use: which stages pair, whether a balance can even
them out (asked before any data is read), and the passes that do it.

* **Pairing.** Stage ``i`` of one model meets stage ``i`` of the other (``check_pairable``); without a depth
  method every stage must have as many units (``check_same_depth``).
* **Legality.** ``add`` inserts identity layers or zero-residual blocks into the shallower model somewhere after
  a stage's first unit; ``merge`` fuses neighbouring layers of the deeper one. ``why_not_add`` and
  ``why_not_merge`` say why a stage refuses one (the passes' own ``why_not``), and ``check_balance`` refuses a
  balance that cannot work with one message that says whether the other can.
* **Passes.** ``insert_units`` grows the shallower side of each stage alignment where the plan says
  (``InsertIdentity`` / ``InsertZeroResidual``, exact; ``InsertPostNormBlock`` for blocks that normalise after their
  adds, BERT's, approximately the identity: the depth merge measures it on the calibration data);
  ``fuse_segment`` fuses one segment of layers (``FuseReluSegment``, signs and LayerNorm scales estimated on the
  calibration data, approximate).

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> why_not_add(g, "stage0") is None, why_not_merge(g, "stage0") is None
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hetsurgery.errors import MergeInputError, PassError
from hetsurgery.ir import Activation, ModelGraph, UnitKind
from hetsurgery.passes import (
    FuseReluSegment,
    InsertIdentity,
    InsertPostNormBlock,
    InsertZeroResidual,
    Pipeline,
)
from hetsurgery.passes.insert_zero_residual import post_norms
from hetsurgery.plan.depth import Balance, StageAlignment
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs, norm_scales

MERGE_ADVICE = ("merge them with depth='cla', 'sma' or 'lma' (and balance='add' to insert units into the shallower "
                "model, or 'merge' to fuse the deeper one's Linear layers)")


def check_pairable(graphs: Sequence[ModelGraph]) -> None:
    """Stage ``i`` of every model meets stage ``i`` of the first: they need the same number and kinds of stages."""
    ref = graphs[0]
    for g in graphs[1:]:
        kinds_ref, kinds = [st.kind.value for st in ref.stages], [st.kind.value for st in g.stages]
        if kinds != kinds_ref:
            raise MergeInputError(
                f"the stages of {g.name} ({', '.join(kinds) or 'none'}) cannot be paired with those of {ref.name} "
                f"({', '.join(kinds_ref) or 'none'}): depth alignment pairs stage i with stage i (the runs between "
                "poolings or stride changes, the residual streams), so both models need the same number and kinds")


def check_same_depth(graphs: Sequence[ModelGraph], advice: str = MERGE_ADVICE) -> None:
    """Without a depth method every model must have the first's units in every stage: say where they differ and
    what to do (``advice``)."""
    ref = graphs[0]
    for g in graphs[1:]:
        shapes_ref = [(st.kind.value, len(st)) for st in ref.stages]
        shapes = [(st.kind.value, len(st)) for st in g.stages]
        if shapes != shapes_ref or len(g.units) != len(ref.units):
            differ = [f"{a.key}: {len(a)} {a.kind.value}s in {ref.name}, {len(b)} in {g.name}"
                      for a, b in zip(ref.stages, g.stages, strict=False) if len(a) != len(b)]
            where = "; ".join(differ) or (f"{len(ref.stages)} stages and {len(ref.units)} units in {ref.name}, "
                                          f"{len(g.stages)} and {len(g.units)} in {g.name}")
            raise MergeInputError(f"{g.name} differs in depth from {ref.name} ({where}): {advice}")


def check_balance(graphs: Sequence[ModelGraph], anchor: int, balance: Balance) -> None:
    """Before any data is read: ``MergeInputError`` when ``balance`` cannot even out a stage whose depths differ
    anywhere in it, saying once whether the other balance can (never one refusal pointing at the other)."""
    for k, g in enumerate(graphs):
        if k == anchor:
            continue
        for a, b in zip(graphs[anchor].stages, g.stages, strict=True):
            if len(a) == len(b):
                continue
            (shallow, s_stage), (deep, d_stage) = sorted(((graphs[anchor], a), (g, b)), key=lambda x: len(x[1]))
            why = {Balance.ADD: why_not_add(shallow, s_stage.key), Balance.MERGE: why_not_merge(deep, d_stage.key)}
            if why[balance] is None:
                continue
            other = Balance.MERGE if balance is Balance.ADD else Balance.ADD
            if why[other] is not None:
                raise MergeInputError(f"neither balance can even out {a.key} of {shallow.name} and {deep.name}: "
                                      f"balance='add' cannot, {why[Balance.ADD]}; balance='merge' cannot, "
                                      f"{why[Balance.MERGE]}. These models cannot be aligned in depth")
            exact = ("approximately: its blocks normalise after their adds, and the report gives the error"
                     if insertion(shallow, s_stage.key) is InsertPostNormBlock else "exact")
            can = (f"it inserts identity units into the shallower model ({exact})" if other is Balance.ADD else
                   f"it fuses {deep.name}'s layers of {d_stage.key} across their activations, an approximation whose "
                   "error on the calibration data the report gives" + _taken_as_relu(deep, d_stage.key))
            raise MergeInputError(f"balance='{balance.value}' cannot even out {a.key} of {shallow.name} and "
                                  f"{deep.name}: {why[balance]}. balance='{other.value}' can: {can}")


def why_not_add(g: ModelGraph, stage: str) -> str | None:
    """Why no unit can be inserted anywhere after the first of ``stage`` (``None``: somewhere it can)."""
    st = g.stage(stage)
    insert = insertion(g, stage)
    reasons = [insert(stage, (p,)).why_not(g) for p in range(1, len(st) + 1)]
    return None if any(r is None for r in reasons) else reasons[0]


def why_not_merge(g: ModelGraph, stage: str) -> str | None:
    """Why no two neighbouring units of ``stage`` can be fused (``None``: some can)."""
    st = g.stage(stage)
    if st.kind is UnitKind.BLOCK:
        return (f"{stage} of {g.name} is a stage of residual blocks, and only Linear layers fuse (CLAFusion's "
                "merge layers)")
    reasons = [FuseReluSegment((u, v), ()).why_not(g) for u, v in zip(st.units, st.units[1:], strict=False)]
    return None if any(r is None for r in reasons) else (reasons[0] if reasons else f"{stage} has one unit")


def _taken_as_relu(g: ModelGraph, stage: str) -> str:
    acts = {a for k in g.stage(stage).units for n in g.unit(k).nodes
            if (a := g.facts[n].activation) not in (None, Activation.IDENTITY, Activation.RELU)}
    return f" ({', '.join(sorted(a.value for a in acts))} taken as a ReLU)" if acts else ""


def insertion(g: ModelGraph, stage: str) -> type[InsertIdentity | InsertZeroResidual]:
    """The pass that inserts units into ``stage``: identity layers into a stage of layers, zero-residual blocks into
    one of blocks, post-norm blocks (approximate) into one whose blocks normalise after their adds.

    >>> import torch, hetsurgery as hs
    >>> g = hs.trace(hs.zoo.resnet((1, 1, 1)), torch.randn(2, 1, 8, 8))
    >>> insertion(g, g.stages[0].key).__name__
    'InsertZeroResidual'
    """
    st = g.stage(stage)
    if st.kind is UnitKind.LAYER:
        return InsertIdentity
    return InsertPostNormBlock if any(post_norms(g, g.unit(k)) for k in st.units) else InsertZeroResidual


def insert_units(g: ModelGraph, stages: Sequence[StageAlignment], deeper: str) -> ModelGraph:
    """``g`` (the shallow side of ``stages``) with units inserted where each alignment says, as deep as ``deeper``."""
    passes = []
    for sa in stages:
        at = tuple(ins.after + 1 for ins in sa.insertions for _ in range(ins.count))
        if at:
            passes.append(insertion(g, sa.stage_shallow)(sa.stage_shallow, at))
    try:
        return Pipeline(tuple(passes))(g)
    except PassError as exc:
        raise MergeInputError(f"balance='add' cannot make {g.name} as deep as {deeper} where the depth plan says: "
                              f"{exc}. Try another depth method") from exc


def fuse_segment(g: ModelGraph, units: Sequence[str], data: Iterable | None, estimator: Estimator) -> ModelGraph:
    """``g`` with the layer units ``units`` fused into one, the activations' signs and the LayerNorms' scales
    estimated on ``data``."""
    if data is None:
        raise MergeInputError(f"fusing {', '.join(units)} of {g.name} estimates each activation's signs on "
                              "calibration data; give data")
    try:
        return Pipeline((FuseReluSegment(tuple(units), estimate_signs(g, units, data, estimator),
                                         norm_scales(g, units, data)),))(g)
    except PassError as exc:
        raise MergeInputError(f"balance='merge' cannot fuse {', '.join(units)} of {g.name} where the depth plan says: "
                              f"{exc}. Try another depth method") from exc
