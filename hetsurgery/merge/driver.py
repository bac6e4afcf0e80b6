"""``merge``: trace → statistics → matching → combine → BatchNorm reset, timed stage by stage."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph, SlotMaps, slots_by_param, transform_params
from hetsurgery.ir.batches import example_of
from hetsurgery.ir.lowering import to_module
from hetsurgery.merge.combine import combine
from hetsurgery.merge.depth import DepthOptions, balance_depths, check_depths
from hetsurgery.merge.fusion import FuseReport
from hetsurgery.merge.methods import METHODS, learned
from hetsurgery.merge.options import check_options
from hetsurgery.merge.topology import check_same_operations, check_same_topology
from hetsurgery.merge.widths import Width, check_width_changes, resolve_widths
from hetsurgery.passes import ResetBatchNorm
from hetsurgery.passes.resize import resized_groups
from hetsurgery.plan.depth import DepthPlan
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.stats import collect_stats
from hetsurgery.plan.width_plan import GroupMatch, WidthPlan
from hetsurgery.tracing import trace

STAGES = ("trace", "similarity", "depth_plan", "balance", "statistics", "matching", "combine", "bn_reset")
BN_RESET_SAMPLES = 512  # BatchNorm statistics settle well within a few hundred images (see BENCHMARKS.md)


@dataclass(frozen=True)
class MergeReport:
    """Seconds per stage (``similarity``, ``depth_plan`` and ``balance`` are the depth alignment's: one pass of
    every model over the data for the unit similarities; ``statistics`` is the width plan's own pass, on the
    balanced models), the widths per group, the depth plan and what fusing cost (``balance="merge"``)."""

    method: str
    seconds: Mapping[str, float]
    groups: tuple[tuple[int, str, tuple[int, ...], int, str], ...]  # id, label, widths in, width out, how
    depth: DepthPlan | None = None
    fusions: tuple[FuseReport, ...] = ()

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
        lines.append(f"{'group':>5} {'widths':>12} {'->':>2} {'out':>5}  how  label")
        for gid, label, widths, out, how in self.groups:
            lines.append(f"{gid:>5} {'/'.join(map(str, widths)):>12} -> {out:>5}  {how}  {label}")
        return "\n".join(lines)


_DEPTH_STAGES = frozenset({"similarity", "depth_plan", "balance"})


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


@dataclass(frozen=True)
class Planned:
    """The traced (and depth-balanced) models and the plans that align them, before anything is combined."""

    graphs: tuple[ModelGraph, ...]
    plan: WidthPlan
    seconds: dict[str, float]
    depth: DepthPlan | None = None
    fusions: tuple[FuseReport, ...] = ()


def plan_merge(models: Sequence[nn.Module], data: Iterable | None, *, method: str = "zip",
               weights: Sequence[float] | None = None, anchor: int = 0, width: Width = None,
               depth: str | None = None, balance: str = "add", depth_cost: str = "cka",
               estimator: str = "sign_of_sum", depth_samples: int | None = 512, depth_anchor: int | None = None,
               example_inputs: torch.Tensor | None = None, memory_budget: int | None = None, progress: bool = True,
               device: torch.device | str | None = None, **method_options: object) -> Planned:
    """Trace the models, align their depths, stream their statistics and solve the width plan (the stages of
    ``merge`` before combining)."""
    depth_opts = DepthOptions.of(depth, balance, depth_cost, estimator, depth_samples, depth_anchor)
    spec = METHODS.get(method)
    if spec is None:
        raise MergeInputError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    if len(models) < 2:
        raise MergeInputError(f"merge needs at least two models, got {len(models)}")
    if not 0 <= anchor < len(models):
        raise MergeInputError(f"anchor {anchor} is not one of the {len(models)} models")
    if spec.wants_data(method_options) and data is None:
        raise MergeInputError(f"method {method!r} needs calibration data")
    if data is not None and iter(data) is data:
        raise MergeInputError("the calibration data is a one-shot iterator (a generator?); merge reads it several "
                         "times (tracing, statistics, BatchNorm reset): pass a list of batches or a DataLoader")
    check_options(method, method_options)
    w = _weights(weights, len(models))
    for k, m in enumerate(models):
        _check_finite(m, f"model {k} ({type(m).__name__})")
    seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    clock = time.perf_counter()
    x = example_inputs if example_inputs is not None else _first_batch(data)
    graphs = tuple(trace(m, x, name=f"model {k} ({type(m).__name__})") for k, m in enumerate(models))
    seconds["trace"] = time.perf_counter() - clock
    balanced = None
    if depth_opts is None:
        check_depths(graphs)
    else:
        balanced = balance_depths(graphs, data, depth_opts, device=default_device(device), progress=progress)
        graphs = balanced.graphs
        seconds.update(balanced.seconds)
    clock = time.perf_counter()
    check_same_topology(graphs, equal_widths=spec.widths is None)
    if spec.widths is None and width is not None:
        raise MergeInputError(f"method {method!r} keeps the models' common widths; width= works with zip, ot and mal")
    targets = resolve_widths(graphs, width, spec.default_width, anchor)
    if spec.widths is not None:
        check_width_changes(graphs, targets, method, spec.widths)
    check_same_operations(graphs)
    seconds["trace"] += time.perf_counter() - clock

    clock = time.perf_counter()
    stats = (collect_stats(graphs, data, full=spec.full_stats, memory_budget=memory_budget, progress=progress,
                           device=default_device(device))
             if spec.wants_data(method_options) and data is not None else None)
    seconds["statistics"] = time.perf_counter() - clock

    clock = time.perf_counter()
    matches = spec.plan(graphs, stats, w, anchor, targets, **method_options)
    matches.update(_fill_unobserved(graphs, matches, w, anchor))
    for grp in graphs[0].groups:
        if not grp.perm_ok:
            matches[grp.id] = GroupMatch.identity(grp.id, [g.group(grp.id).size for g in graphs], w)
    plan = WidthPlan(method, tuple(w), anchor, dict(sorted(matches.items())),
                     {grp.id: grp.key for grp in graphs[anchor].groups if grp.id in matches})
    seconds["matching"] = time.perf_counter() - clock
    if balanced is None:
        return Planned(graphs, plan, seconds)
    return Planned(graphs, plan, seconds, balanced.plan, balanced.fusions)


def merge(models: Sequence[nn.Module], data: Iterable | None, *, method: str = "zip",
          weights: Sequence[float] | None = None, reset_bn: bool | int = True, anchor: int = 0, width: Width = None,
          depth: str | None = None, balance: str = "add", depth_cost: str = "cka", estimator: str = "sign_of_sum",
          depth_samples: int | None = 512, depth_anchor: int | None = None, example_inputs: torch.Tensor | None = None,
          memory_budget: int | None = None, progress: bool = True, device: torch.device | str | None = None,
          **method_options: object) -> MergeResult:
    """Merge ``models`` into one ``nn.Module`` without training; they may differ in width and, with ``depth``,
    in depth.

    ``data`` yields calibration batches (tensors or ``(inputs, labels)``): it feeds the statistics of
    data-driven methods and the BatchNorm reset. ``method`` is ``average``, ``permute``, ``weight``,
    ``ot``, ``zip``, ``mal`` or ``mal-pad``; its options (``alpha=``, ``beta=``, ``solver=``, ...) are
    keyword arguments. ``weights`` (default uniform) weigh the models; ``anchor`` is the model the others
    are aligned to. Models may differ in width (zip, ot, mal): ``width`` picks the merged widths,
    ``"max"``, ``"min"``, a model index or ``{group: width}`` (default: zip the widest, ot and mal the anchor).
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
    first ``N`` (an int), or not at all (``False``). The forward passes (statistics, BatchNorm reset) run
    on ``device``: by default a CUDA GPU when one is present, else where the models are.

    >>> import torch, hetsurgery as hs
    >>> a, b = hs.zoo.mlp([16]), hs.zoo.mlp([16])
    >>> r = hs.merge([a, b], [torch.randn(64, 64)], method="permute", progress=False)
    >>> r.model(torch.randn(3, 64)).shape
    torch.Size([3, 10])
    """
    planned = plan_merge(models, data, method=method, weights=weights, anchor=anchor, width=width, depth=depth,
                         balance=balance, depth_cost=depth_cost, estimator=estimator, depth_samples=depth_samples,
                         depth_anchor=depth_anchor, example_inputs=example_inputs,
                         memory_budget=memory_budget, progress=progress, device=device, **method_options)
    graphs, plan, seconds = planned.graphs, planned.plan, planned.seconds

    clock = time.perf_counter()
    merged = _merged_graph(graphs[anchor], plan, combine(graphs, plan))
    seconds["combine"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if reset_bn and data is not None:
        budget = BN_RESET_SAMPLES if reset_bn is True else int(reset_bn)
        merged = ResetBatchNorm(data, max_samples=budget, device=default_device(device))(merged)
    seconds["bn_reset"] = time.perf_counter() - clock

    report = MergeReport(method, seconds, tuple(
        (grp.id, grp.label, tuple(g.group(grp.id).size for g in graphs), plan.groups[grp.id].size,
         str(plan.groups[grp.id].info.get("kind", method))) for grp in graphs[0].groups), planned.depth,
        planned.fusions)
    # the merged tensors are new: the module takes them without a copy (so .model and .graph share them)
    return MergeResult(to_module(merged, share=True).eval(), plan, report, merged, planned.depth)


def align(models: Sequence[nn.Module], data: Iterable | None, *, method: str = "permute",
          **options: Any) -> list[nn.Module]:
    """Each model carried into the merged channel space (``M̃_k W U_k``), nothing combined.

    With a permutation method this is each model permuted to line up with the anchor, the input of an
    interpolation curve.
    """
    planned = plan_merge(models, data, method=method, **options)
    out: list[nn.Module] = []
    for k, g in enumerate(planned.graphs):
        maps = SlotMaps.of(planned.plan.groups, k, normalised=True)
        params = transform_params(g.params, slots_by_param(g.groups), maps, names=g.params)
        out.append(to_module(_merged_graph(g, planned.plan, params)).eval())
    return out


def _merged_graph(base: ModelGraph, plan: WidthPlan, params: Mapping[str, torch.Tensor]) -> ModelGraph:
    return base.with_updates(params, resized_groups(base, plan.widths()))


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


def default_device(device: torch.device | str | None) -> torch.device | str | None:
    """The device for forward passes: the one asked for, else CUDA when present, else the models' own."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else None


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                  for x in weights)
    if len(weights) != n or not numbers or sum(weights) <= 0:
        raise MergeInputError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(x) / total for x in weights]


def _check_finite(model: nn.Module, name: str) -> None:
    for pname, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MergeInputError(f"{name}: {pname} holds NaN or Inf; fix or retrain the model before merging")


def _first_batch(data: Iterable | None) -> torch.Tensor | dict[str, object]:
    if data is None:
        raise MergeInputError("give example_inputs= or calibration data to trace the models")
    for batch in data:
        return example_of(batch)
    raise MergeInputError("the calibration data is empty")
