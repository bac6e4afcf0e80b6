"""``merge``: trace → statistics → matching → combine → BatchNorm reset, timed stage by stage."""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hetsurgery.errors import MergeInputError, UnalignedGroupWarning
from hetsurgery.ir import ModelGraph, SlotMaps, slots_by_param, transform_params
from hetsurgery.ir.batches import Resumable, one_shot
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging import one_pass
from hetsurgery.merging.balance import check_same_depth
from hetsurgery.merging.combine import combine
from hetsurgery.merging.depth import balance_depths
from hetsurgery.merging.depth_options import DepthCost
from hetsurgery.merging.fusion import FuseReport, InsertReport
from hetsurgery.merging.head_counts import changing_heads, layout_model
from hetsurgery.merging.inputs import (
    BN_RESET_SAMPLES,
    check_finite,
    check_saveable,
    default_device,
    first_batch,
    merge_weights,
    model_names,
)
from hetsurgery.merging.inserted import inserted_units, real_interiors, zero_branches
from hetsurgery.merging.methods import METHODS, Values, learned
from hetsurgery.merging.options import MergeOptions
from hetsurgery.merging.partial import PartialReport, partial_zip
from hetsurgery.merging.repair import repair, repair_wanted
from hetsurgery.merging.topology import check_same_operations, check_same_topology
from hetsurgery.merging.unaligned import unaligned_groups
from hetsurgery.merging.widths import check_width_changes, resolve_widths
from hetsurgery.passes import MapGroups, Pipeline, ResetBatchNorm
from hetsurgery.plan.depth import DepthMethod, DepthPlan
from hetsurgery.plan.distributed import join
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.stats import Done, GroupStats, Runner, collect_stats
from hetsurgery.plan.width_plan import GroupMatch, WidthPlan
from hetsurgery.tracing import trace

STAGES = ("trace", "similarity", "depth_plan", "balance", "statistics", "matching", "combine", "repair", "bn_reset")


@dataclass(frozen=True)
class MergeReport:
    """Seconds per stage (``similarity``, ``depth_plan`` and ``balance`` are the depth alignment's: every model over
    the first ``depth_samples`` samples for the unit similarities; ``statistics`` is the width plan's pass, on the
    balanced models), the widths per group, the depth plan, what approximate balancing cost, and how often each model
    ran over the data for both (``passes``: 1 where the similarity pass also gathered the statistics of the samples
    it read and the statistics went on from there, ``merging.one_pass``)."""

    method: str
    seconds: Mapping[str, float]
    groups: tuple[tuple[int, str, tuple[int, ...], int, str], ...]  # id, label, widths in, width out, how
    depth: DepthPlan | None = None
    fusions: tuple[FuseReport | InsertReport, ...] = ()
    unaligned: tuple[str, ...] = ()  # why groups were left as they are (``unaligned_groups``), also warned
    partial: PartialReport | None = None  # where a partial zip cut the models (``stop_at``)
    passes: int | None = None  # how often each model ran over the calibration data for similarities and statistics

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def __str__(self) -> str:
        times = "  ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items() if v or k not in _DEPTH_STAGES)
        lines = [f"merge method={self.method}: {times}  (total {self.total_seconds:.2f}s)"]
        if self.depth is not None:
            lines.append(f"depth plan (anchor: model {self.depth.anchor}):")
            lines += [f"  model {md.model} {sa}" for md in self.depth.models for sa in md.stages]
            lines += [f"  {f}" for f in self.fusions]
            if self.passes is not None:
                lines.append(f"passes of each model over the calibration data (unit similarities and statistics): "
                             f"{self.passes}")
        lines.append(f"{'group':>5} {'widths':>12} {'->':>2} {'out':>5}  how  label")
        for gid, label, widths, out, how in self.groups:
            lines.append(f"{gid:>5} {'/'.join(map(str, widths)):>12} -> {out:>5}  {how}  {label}")
        lines += [f"warning: {text}" for text in self.unaligned]
        if self.partial is not None:
            lines.append(str(self.partial))
        return "\n".join(lines)


_DEPTH_STAGES = frozenset({"similarity", "depth_plan", "balance", "repair"})  # shown when they ran


@dataclass(frozen=True)
class MergeResult:
    """The merged ``model``, the ``plan`` that aligned the inputs (and the ``depth`` plan that balanced them),
    the timed ``report``, and the merged ``graph`` (its tensors are the model's own: change one and the other
    sees it)."""

    model: nn.Module
    plan: WidthPlan
    report: MergeReport
    graph: ModelGraph = field(repr=False)
    depth: DepthPlan | None = field(default=None, repr=False)

    def save(self, folder: str | os.PathLike[str], *, report: object | None = None, name: str | None = None) -> Path:
        """Write the merged model as a package (``hetsurgery.export.save``) keeping everything: the width plan, the
        depth plan with the passes that balanced each model, and the report (``report``, else ``self.report``)."""
        from hetsurgery.export import save

        return save(self.graph, folder, plan=self.plan, report=report if report is not None else self.report,
                    name=name, depth=self.depth)

    def to_pretrained(self, like: nn.Module) -> nn.Module:
        """The merged weights in ``like``'s own class (``hetsurgery.export.to_pretrained``): for a Hugging Face model
        a ``PreTrainedModel`` whose config says the merged depth and sizes, so ``save_pretrained`` and
        ``from_pretrained`` round-trip. Only a structure the class can build goes back into it."""
        from hetsurgery.export.pretrained import to_pretrained

        return to_pretrained(self.graph, like)


@dataclass(frozen=True)
class Planned:
    """The traced (and depth-balanced) models and the plans that align them, before anything is combined."""

    graphs: tuple[ModelGraph, ...]
    plan: WidthPlan
    seconds: dict[str, float]
    depth: DepthPlan | None = None
    fusions: tuple[FuseReport | InsertReport, ...] = ()
    unaligned: tuple[str, ...] = ()
    passes: int = 1  # how often each model ran over the calibration data for the similarities and statistics


def plan_merge(models: Sequence[nn.Module], data: Iterable | None, options: MergeOptions | None = None,
               **keywords: Any) -> Planned:
    """Trace the models, align their depths, stream their statistics and solve the width plan (the stages of
    ``merge`` before combining); ``options`` (or ``merge``'s keywords) as for ``merge``."""
    o = MergeOptions.given(options, keywords)
    method, method_options, anchor = o.method, dict(o.method_options), o.anchor
    labels = model_names(models, o.names)
    spec = METHODS[method]  # known: MergeOptions.of checked it
    if len(models) < 2:
        raise MergeInputError(f"merge needs at least two models, got {len(models)}")
    if not 0 <= anchor < len(models):
        raise MergeInputError(f"anchor {anchor} is not one of the {len(models)} models")
    if spec.wants_data(method_options) and data is None:
        raise MergeInputError(f"method {method!r} needs calibration data")
    if data is not None and one_shot(data):
        raise MergeInputError("the calibration data is a one-shot iterator (a generator?); merge reads it several "
                         "times (tracing, statistics, BatchNorm reset): pass a list of batches or a DataLoader")
    merge_weights(o.weights, len(models))  # checked before any work
    for m, label in zip(models, labels, strict=True):
        check_finite(m, label)
    seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    clock = time.perf_counter()
    x = o.example_inputs if o.example_inputs is not None else first_batch(data)
    graphs = tuple(trace(m, x, name=label) for m, label in zip(models, labels, strict=True))
    if o.saveable:
        check_saveable(graphs)
    seconds["trace"] = time.perf_counter() - clock
    return plan_traced(graphs, data, o, seconds)


def plan_traced(graphs: Sequence[ModelGraph], data: Iterable | None, o: MergeOptions, seconds: dict[str, float], *,
                values: Values | None = None, runner: Runner | None = None) -> Planned:
    """``plan_merge`` once the models are traced: depth, checks, statistics, the width plan. ``values`` (per model,
    its parameter values by name) and ``runner`` (how the models run over the data) stand for the graphs' own
    tensors: a streamed merge reads them from the checkpoints (``hetsurgery.stream``). With ``o.distributed`` the
    statistics are shared among the processes ``torchrun`` started, and rank 0 plans (``plan.distributed``)."""
    method, method_options, anchor, device, progress = o.method, dict(o.method_options), o.anchor, o.device, \
        o.progress
    spec = METHODS[method]
    w = merge_weights(o.weights, len(graphs))
    world = join(o.distributed, default_device(device))
    balanced = None
    originals = tuple(graphs)
    wants = spec.wants_data(method_options) and data is not None
    # a depth merge whose similarity pass also gathers the statistics of every pairing the plan may choose
    once = wants and runner is None and one_pass.possible(graphs, o, alone=world.size == 1)
    if once and data is not None:
        data = Resumable(data)
    if o.depth is None:
        check_same_depth(graphs)
    else:
        gather = (lambda anchor: one_pass.Gather(originals, anchor, spec.full_stats,
                                                 exits=o.depth is not None and o.depth.method is not DepthMethod.CLA)
                  ) if once else None
        balanced = balance_depths(graphs, data, o.depth, device=default_device(device), progress=progress,
                                  gather=gather)
        graphs = balanced.graphs
        seconds.update(balanced.seconds)
    clock = time.perf_counter()
    check_same_topology(graphs, equal_widths=spec.widths is None)
    if spec.widths is None and o.width is not None:
        raise MergeInputError(f"method {method!r} keeps the models' common widths; width= works with zip, ot and mal")
    targets = resolve_widths(graphs, o.width, spec.default_width, anchor)
    layout = layout_model(graphs, targets, method, anchor) if spec.widths is not None else None
    if spec.widths is not None:
        check_width_changes(graphs, targets, method, spec.widths,
                            skip=changing_heads(graphs, targets) if layout is not None else ())
    if layout is not None and layout != anchor:  # heads of different counts: the merged model is this one's layout
        o = replace(o, anchor=layout)
        anchor = layout
    check_same_operations(graphs)
    if o.partial is not None:
        o.partial.units_merged(graphs[anchor])  # a cut the balanced models have, before their statistics
    if spec.prepare is not None:  # exact edits the method's plan relies on (zip: norms folded into their readers)
        prepared = spec.prepare(graphs)
        once = once and all(p is g for p, g in zip(prepared, graphs, strict=True))
        graphs = prepared
    seconds["trace"] += time.perf_counter() - clock

    clock = time.perf_counter()
    solved: dict[int, GroupMatch] = {}
    depth = None if balanced is None else balanced.plan
    interiors = real_interiors(graphs, depth)  # inside inserted blocks: one model's channels, no statistics needed
    done = _solve_when_observed(graphs, w, targets, o, solved, world.leader) if runner is not None and wants else None
    observed = [grp.id for grp in graphs[0].permutable() if grp.id not in interiors]
    inserted = [inserted_units(depth, k) for k in range(len(graphs))]
    shortcuts = [zero_branches(g, units) for g, units in zip(graphs, inserted, strict=True)]
    seeds = None
    if once and balanced is not None and isinstance(balanced.gathered, one_pass.Gather):
        seeds = one_pass.seeded(balanced.gathered, graphs, balanced.own, balanced.plan, shortcuts, inserted, observed)
    if isinstance(data, Resumable) and seeds is None:  # a site not traced back: the statistics read all the data
        data = data.data
    similarity = o.depth is not None and o.depth.cost is not DepthCost.WIDTH and data is not None
    passes = int(wants) + int(similarity) - int(seeds is not None)
    stats = (collect_stats(graphs, data, groups=observed, full=spec.full_stats, memory_budget=o.memory_budget,
                           progress=progress, device=default_device(device), world=world, runner=runner, done=done,
                           shortcuts=shortcuts, initial=seeds)
             if wants and data is not None else None)
    seconds["statistics"] = time.perf_counter() - clock

    clock = time.perf_counter()
    plan = world.broadcast(_width_plan(graphs, stats, w, targets, o, values, solved if done is not None else None,
                                       interiors) if world.leader else None)
    seconds["matching"] = time.perf_counter() - clock
    unaligned = unaligned_groups(graphs[0], method)
    for text in unaligned:
        warnings.warn(text, UnalignedGroupWarning, stacklevel=4)
    if balanced is None:
        return Planned(tuple(graphs), plan, seconds, unaligned=unaligned, passes=passes)
    return Planned(tuple(graphs), plan, seconds, balanced.plan, balanced.fusions, unaligned, passes)


def _solve_when_observed(graphs: Sequence[ModelGraph], w: Sequence[float], targets: Mapping[int, int],
                         o: MergeOptions, solved: dict[int, GroupMatch], leader: bool) -> Done:
    """What a streamed pass does with each group's statistics as soon as they are complete: solve the group (with the
    groups its heads move with, once all are in) into ``solved`` and let the statistics go, so only the groups of the
    blocks in flight hold statistics at once. The methods solve each group (or tied unit) on its own statistics, so
    the plan is the one solving them all at the end gives."""
    spec = METHODS[o.method]
    pending: dict[int, GroupStats] = {}
    ref = graphs[0]
    observed = {g.id for g in ref.permutable() if g.sites}

    def unit(gid: int) -> list[int]:
        grp = ref.group(gid)
        return sorted({gid, *grp.heads_with} & observed) if grp.structure.moves else [gid]

    def done(gid: int, s: GroupStats) -> None:
        pending[gid] = s
        members = unit(gid)
        if all(m in pending for m in members):
            ready = {m: pending.pop(m) for m in members}
            if leader:
                solved.update(spec.plan(graphs, ready, w, o.anchor, targets, **dict(o.method_options)))

    return done


def _width_plan(graphs: Sequence[ModelGraph], stats: Mapping[int, GroupStats] | None, w: Sequence[float],
                targets: Mapping[int, int], o: MergeOptions, values: Values | None,
                solved: Mapping[int, GroupMatch] | None = None, known: Mapping[int, GroupMatch] | None = None
                ) -> WidthPlan:
    """The width plan: the method's matches, ``known`` ones (the inside of inserted blocks) as they are, weight
    matching for groups no node shows, the identity for frozen groups."""
    spec, anchor = METHODS[o.method], o.anchor
    reads = "values" in inspect.signature(spec.plan).parameters  # the methods that read weights take them
    extra = (values,) if values is not None and reads else ()
    matches = dict(solved) if solved is not None else spec.plan(graphs, stats, w, anchor, targets, *extra,
                                                   **dict(o.method_options))
    matches.update(known or {})
    matches.update(_fill_unobserved(graphs, matches, w, anchor))
    for grp in graphs[0].groups:
        if not grp.perm_ok:
            matches[grp.id] = GroupMatch.identity(grp.id, [g.group(grp.id).size for g in graphs], w)
    return WidthPlan(o.method, tuple(w), anchor, dict(sorted(matches.items())),
                     {grp.id: grp.key for grp in graphs[anchor].groups if grp.id in matches})


def merge(models: Sequence[nn.Module], data: Iterable | None, options: MergeOptions | None = None,
          **keywords: Any) -> MergeResult:
    """Merge ``models`` into one ``nn.Module`` without training; they may differ in width and, with ``depth``,
    in depth. The options below are keywords (``merge(models, data, method="zip", alpha=0.5)``), checked once
    into a ``MergeOptions``, which may be passed instead (``options=MergeOptions.of(...)``, reusable).

    ``data`` yields calibration batches (tensors or ``(inputs, labels)``): it feeds the statistics of
    data-driven methods and the BatchNorm reset. ``method`` is ``average``, ``permute``, ``weight``,
    ``ot``, ``zip``, ``mal`` or ``mal-pad``; its options (``alpha=``, ``beta=``, ``solver=``, ...) are
    keyword arguments. ``weights`` (default uniform) weigh the models; ``anchor`` is the model the others
    are aligned to. Models may differ in width (zip, ot, mal): ``width`` picks the merged widths,
    ``"max"``, ``"min"``, a model index or ``{group: width}`` (default: zip and ot the widest, mal the anchor).
    Models of different depth need ``depth="cla" | "sma" | "lma"`` (CLAFusion's cross-layer alignment, Xu et
    al.'s segment- or layer-wise alignment on linear CKA) and ``balance="add"`` (identity layers and
    zero-residual blocks inserted into the shallower models: the merged model has the deepest model's
    structure) or ``"merge"`` (Linear chains of the deeper models fused across their ReLUs, the signs
    estimated by ``estimator``: the shallowest model's structure). ``depth_cost="width"`` gives CLA
    CLAFusion's data-free cost. The unit similarities use the first ``depth_samples`` calibration samples
    (``None``: all). Every model is balanced to one depth anchor: the deepest (``"merge"``: the shallowest),
    then the widest, or the model ``depth_anchor`` names. The depth plan is ``result.depth`` and part of the
    report.
    ``reset_bn`` recomputes BatchNorm statistics on the first 512 calibration samples (``True``), on the
    first ``N`` (a whole number), or not at all (``False``). ``repair`` (REPAIR, ``merging.repair``) sets the merged
    layers' output statistics to the models' on as many samples; ``None``, the default, repairs models that
    normalise without running statistics (LayerNorm, RMSNorm: transformers), except plain averaging. The forward passes (statistics, BatchNorm reset)
    run on ``device``: by default a CUDA GPU when one is present, else where the models are. ``names`` name the
    models in messages and the report (default ``model 0 (ClassName)``, ...); ``saveable=True`` refuses, right
    after tracing, models that ``hetsurgery.export.save`` could not write as a package (a forward calling
    ``math.sqrt``, a layer of your own class), instead of failing when the merged model is saved.

    >>> import torch, hetsurgery as hs
    >>> a, b = hs.zoo.mlp([16]), hs.zoo.mlp([16])
    >>> r = hs.merge([a, b], [torch.randn(64, 64)], method="permute", progress=False)
    >>> r.model(torch.randn(3, 64)).shape
    torch.Size([3, 10])
    """
    o = MergeOptions.given(options, keywords)
    planned = plan_merge(models, data, o)
    graphs, plan, seconds = planned.graphs, planned.plan, planned.seconds

    clock = time.perf_counter()
    merged = combine(graphs, plan)
    seconds["combine"] = time.perf_counter() - clock

    clock = time.perf_counter()
    # REPAIR: the layers' output statistics set to the models' (merging.repair); by default for norm models
    if data is not None and (o.repair or (o.repair is None and repair_wanted(graphs, o.method))):
        samples = BN_RESET_SAMPLES if o.repair in (True, None) else int(o.repair)
        merged = repair(merged, graphs, plan, data, max_samples=samples,
                        device=default_device(o.device))
    seconds["repair"] = time.perf_counter() - clock

    clock = time.perf_counter()
    budget = (BN_RESET_SAMPLES if o.reset_bn is True else int(o.reset_bn)) if o.reset_bn and data is not None else None
    if budget is not None and data is not None:
        merged = ResetBatchNorm(data, max_samples=budget, device=default_device(o.device))(merged)
    seconds["bn_reset"] = time.perf_counter() - clock
    partial = None
    if o.partial is not None:  # the trunk of the full merge, each model's own tail after it
        clock = time.perf_counter()
        merged, partial = partial_zip(merged, graphs, plan, planned.depth, o.partial, data, reset_bn=budget,
                                      device=default_device(o.device))
        seconds["partial"] = time.perf_counter() - clock

    report = MergeReport(o.method, seconds, tuple(
        (grp.id, grp.label, tuple(g.group(grp.id).size for g in graphs), plan.groups[grp.id].size,
         "frozen" if not grp.perm_ok else str(plan.groups[grp.id].kind or o.method))
        for grp in graphs[0].groups), planned.depth, planned.fusions, planned.unaligned, partial, planned.passes)
    # the merged tensors are new: the module takes them without a copy (so .model and .graph share them)
    return MergeResult(to_module(merged, share=True).eval(), plan, report, merged, planned.depth)


def align(models: Sequence[nn.Module], data: Iterable | None, options: MergeOptions | None = None,
          **keywords: Any) -> list[nn.Module]:
    """Each model carried into the merged channel space (``M̃_k W U_k``), nothing combined; ``options`` or
    keywords as for ``merge``, the method ``permute`` unless given.

    With a permutation method this is each model permuted to line up with the anchor, the input of an
    interpolation curve.
    """
    o = MergeOptions.given(options, keywords if options is not None else {"method": "permute", **keywords})
    planned = plan_merge(models, data, o)
    return [to_module(Pipeline((MapGroups.carrying(planned.plan.groups, k, normalised=True),))(g)).eval()
            for k, g in enumerate(planned.graphs)]


def _fill_unobserved(graphs: Sequence[ModelGraph], matches: Mapping[int, GroupMatch], w: Sequence[float],
                     anchor: int) -> dict[int, GroupMatch]:
    """Groups no fx node shows (inside nn.MultiheadAttention): weight matching, everything else aligned."""
    missing = [g for g in graphs[0].permutable() if g.id not in matches]
    if not missing:
        return {}
    names = sorted({s.param for g in missing for s in g.slots})

    def aligned(k: int) -> dict[str, torch.Tensor]:
        maps = SlotMaps.of(matches, k, normalised=True)
        return transform_params(graphs[k].params, slots_by_param(graphs[k].groups), maps, names)

    ref = {name: t for name, t in aligned(anchor).items() if name in learned(graphs[anchor])}
    perms: list[dict[int, torch.Tensor]] = []
    for k in range(len(graphs)):
        perms.append({g.id: torch.arange(g.size) for g in missing} if k == anchor
                     else weight_matching(ref, aligned(k), missing)[0])
    return {g.id: GroupMatch.from_perms(g.id, [p[g.id] for p in perms], w, {"note": "no observable features: "
                                        "matched by weights"}) for g in missing}
