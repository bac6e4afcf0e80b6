"""Depth alignment inside ``merge``: unit similarity, the depth plan, balancing, and the correspondence.

1. **Similarity.** Every model runs once over the first ``depth_samples`` calibration samples (512 by
   default: linear CKA over every position of 512 images settles well before that, and the width plan's own
   pass over all the data is the expensive one) beside the anchor; linear CKA between each of its units and
   each unit of the anchor's corresponding stage is streamed (``StreamingCKA``: no activation is stored).
   CLA compares pre-activations (``Unit.pre``), SMA and LMA unit outputs (``Unit.exit``); CLA with
   ``depth_cost="width"`` compares widths instead and needs no data.
2. **Plan.** Stage ``i`` of a model is aligned with stage ``i`` of the anchor (CLA / SMA / LMA,
   ``plan.depth``). With ``balance="add"`` the anchor is the deepest model and the others get units
   inserted; with ``balance="merge"`` it is the shallowest and the others have segments fused. Between
   models of equal depth the widest is the anchor (the most channels over its permutable groups: it
   loses the least when the others are carried onto its structure), then the first; ``depth_anchor=``
   names it instead (it must then be the deepest, or shallowest, in every stage).
3. **Balance.** ``InsertIdentity`` / ``InsertZeroResidual`` (exact) or ``FuseReluSegment`` with signs
   estimated on the calibration data (an approximation, measured in the report).
4. **Correspondence.** Each balanced model is carried onto the anchor's structure and names
   (``correspond.on_anchor_names``), unit by unit; the width methods then see models of one topology.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from hetsurgery.errors import MergeInputError, PassError
from hetsurgery.ir import ModelGraph, Site, UnitKind
from hetsurgery.ir.batches import Inputs, input_names, model_input
from hetsurgery.merge.correspond import on_anchor_names
from hetsurgery.merge.fusion import FuseReport, compare
from hetsurgery.passes import FuseReluSegment, InsertIdentity, InsertZeroResidual, Pipeline
from hetsurgery.plan.depth import Balance, DepthMethod, DepthPlan, ModelDepth, StageAlignment, StreamingCKA
from hetsurgery.plan.depth.cka import width_cost
from hetsurgery.plan.depth.depth_plan import Score, align_stage
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs
from hetsurgery.plan.joint import site_view, tap_module

COSTS = ("cka", "width")
DEPTH_SAMPLES = 512
E = TypeVar("E", bound=Enum)


@dataclass(frozen=True)
class DepthOptions:
    method: DepthMethod
    balance: Balance
    cost: str = "cka"  # CLA only: "width" compares widths, without data
    estimator: Estimator = Estimator.SIGN_OF_SUM  # balance="merge": how each fused ReLU's D is estimated
    samples: int | None = DEPTH_SAMPLES  # calibration samples the unit similarities use (None: all)
    anchor: int | None = None  # the model the others are balanced to (None: the deepest, then the widest)

    @staticmethod
    def of(depth: str | DepthMethod | None, balance: str | Balance, cost: str, estimator: str | Estimator,
           samples: int | None = DEPTH_SAMPLES, anchor: int | None = None) -> DepthOptions | None:
        """The options as given to ``merge``, checked (``MergeInputError`` naming the bad value)."""
        if depth is None:
            given = [f"{k}={v!r}" for k, v, default in (("balance", balance, "add"), ("depth_cost", cost, "cka"),
                                                         ("estimator", estimator, "sign_of_sum")) if v != default]
            if given:
                raise MergeInputError(f"{', '.join(given)} only matter for models of different depth: give depth="
                                      "'cla', 'sma' or 'lma' too")
            return None
        method = _enum(DepthMethod, depth, "depth")
        bal = _enum(Balance, balance, "balance")
        if cost not in COSTS:
            raise MergeInputError(f"depth_cost must be one of {', '.join(COSTS)}, not {cost!r}")
        if cost == "width" and method is not DepthMethod.CLA:
            raise MergeInputError(f"depth_cost='width' is CLAFusion's data-free cost: use it with depth='cla', "
                                  f"not {method.value!r}")
        if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 2):
            raise MergeInputError(f"depth_samples must be a whole number of at least 2, or None, not {samples!r}")
        if anchor is not None and (not isinstance(anchor, int) or isinstance(anchor, bool) or anchor < 0):
            raise MergeInputError(f"depth_anchor must be a model index (0, 1, ...) or None, not {anchor!r}")
        return DepthOptions(method, bal, cost, _enum(Estimator, estimator, "estimator"), samples, anchor)


@dataclass(frozen=True)
class Balanced:
    """The models balanced and carried onto the anchor's names, the plan, what it cost."""

    graphs: tuple[ModelGraph, ...]
    plan: DepthPlan
    seconds: dict[str, float]
    fusions: tuple[FuseReport, ...] = field(default=())


def check_depths(graphs: Sequence[ModelGraph]) -> None:
    """Without ``depth=`` the models must have the same units in every stage: say where they differ."""
    ref = graphs[0]
    for g in graphs[1:]:
        shapes_ref = [(st.kind.value, len(st)) for st in ref.stages]
        shapes = [(st.kind.value, len(st)) for st in g.stages]
        if shapes != shapes_ref or len(g.units) != len(ref.units):
            differ = [f"{a.key}: {len(a)} {a.kind.value}s in {ref.name}, {len(b)} in {g.name}"
                      for a, b in zip(ref.stages, g.stages, strict=False) if len(a) != len(b)]
            where = "; ".join(differ) or f"{len(ref.stages)} stages in {ref.name}, {len(g.stages)} in {g.name}"
            raise MergeInputError(f"the models differ in depth ({where}): merge them with depth='cla', 'sma' or "
                                  "'lma' (and balance='add' to insert units into the shallower model, or 'merge' to "
                                  "fuse the deeper one's Linear layers)")


def balance_depths(graphs: Sequence[ModelGraph], data: Iterable | None, opts: DepthOptions, *,
                   device: torch.device | str | None, progress: bool) -> Balanced:
    """Align every model's stages with the anchor's, balance them, and carry them onto the anchor's names."""
    check_pairable(graphs)
    anchor = _anchor(graphs, opts.balance, opts.anchor)
    seconds = {}
    clock = time.perf_counter()
    scores = _similarities(graphs, anchor, data, opts, device=device, progress=progress)
    seconds["similarity"] = time.perf_counter() - clock
    clock = time.perf_counter()
    plan = _plan(graphs, anchor, scores, opts)
    seconds["depth_plan"] = time.perf_counter() - clock
    clock = time.perf_counter()
    balanced, reports = _balance(graphs, anchor, plan, data, opts)
    carried = tuple(g if k == anchor else on_anchor_names(balanced[anchor], g) for k, g in enumerate(balanced))
    seconds["balance"] = time.perf_counter() - clock
    return Balanced(carried, plan, seconds, tuple(reports))


def _enum(kind: type[E], value: object, what: str) -> E:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise MergeInputError(f"{what} must be one of {', '.join(str(m.value) for m in kind)}, not {value!r}") from None


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


def _feature_node(opts: DepthOptions, g: ModelGraph, unit: str) -> str:
    u = g.unit(unit)
    return u.pre if opts.method is DepthMethod.CLA else u.exit


def _similarities(graphs: Sequence[ModelGraph], anchor: int, data: Iterable | None, opts: DepthOptions, *,
                  device: torch.device | str | None, progress: bool) -> dict[int, dict[str, torch.Tensor]]:
    """Per other model ``k``, per stage key: the (shallow units x deep units) score matrix."""
    others = [k for k in range(len(graphs)) if k != anchor]
    if opts.cost == "width":
        return {k: {st.key: _width_matrix(graphs, k, anchor, opts, st.key) for st in graphs[k].stages}
                for k in others}
    if data is None:
        raise MergeInputError(f"depth={opts.method.value!r} compares the units on calibration data; give data (or "
                              "use depth='cla' with depth_cost='width')")
    cka = {k: StreamingCKA({st.key: _pair_units(graphs, k, anchor, opts, st.key) for st in graphs[k].stages})
           for k in others}
    taps = {k: _Tap.of(g, opts, device) for k, g in enumerate(graphs)}
    target = device if device is not None else next(iter(graphs[0].params.values())).device
    seen = 0
    with torch.no_grad():
        for batch in tqdm(data, desc="unit similarity", unit="batch", disable=not progress, leave=False):
            if opts.samples is not None and seen >= opts.samples:
                break
            x = model_input(batch, input_names(taps[anchor].module)).to(target)
            x = x if opts.samples is None else x[:opts.samples - seen]
            seen += x.samples
            ref = taps[anchor].features(x)
            for k in others:
                own = taps[k].features(x)
                shallow, _ = _roles(k, anchor, opts.balance)
                cka[k].add(*((own, ref) if shallow == k else (ref, own)))
    similarity = {k: {key: cka[k].matrix(key) for key in cka[k].pairs} for k in others}
    if opts.method is DepthMethod.CLA:  # CLA minimises a cost
        return {k: {key: 1.0 - m for key, m in per.items()} for k, per in similarity.items()}
    return similarity


def _pair_units(graphs: Sequence[ModelGraph], k: int, anchor: int, opts: DepthOptions, key: str
                ) -> tuple[list[str], list[str]]:
    shallow, deep = _roles(k, anchor, opts.balance)
    return list(graphs[shallow].stage(key).units), list(graphs[deep].stage(key).units)


def _width_matrix(graphs: Sequence[ModelGraph], k: int, anchor: int, opts: DepthOptions, key: str) -> torch.Tensor:
    shallow, deep = _roles(k, anchor, opts.balance)

    def widths(g: ModelGraph) -> list[int]:
        out = []
        for unit in g.stage(key).units:
            f = g.facts[_feature_node(opts, g, unit)]
            out.append(f.shape[f.channel_dim] if f.shape is not None and f.channel_dim is not None else 0)
        return out

    return torch.as_tensor(width_cost(widths(graphs[shallow]), widths(graphs[deep])), dtype=torch.float64)


@dataclass(frozen=True)
class _Tap:
    """A copy of a model that returns the feature node of each of its staged units."""

    module: torch.fx.GraphModule
    nodes: tuple[str, ...]  # the feature node of each unit, in the module's output order
    units: tuple[str, ...]
    dims: tuple[int, ...]

    @staticmethod
    def of(g: ModelGraph, opts: DepthOptions, device: torch.device | str | None) -> _Tap:
        units = tuple(u for st in g.stages for u in st.units)
        nodes = tuple(_feature_node(opts, g, u) for u in units)
        dims = tuple(_channel_dim(g, n) for n in nodes)
        tap = tap_module(g, list(nodes))
        return _Tap(tap.to(device) if device is not None else tap, nodes, units, dims)

    def features(self, x: Inputs) -> dict[str, torch.Tensor]:
        """Each unit's features as an ``(A, C, M)`` view: every position (batch, pixels, tokens) is a sample."""
        return {u: site_view(out, Site(n, d), out.shape[d])
                for u, n, d, out in zip(self.units, self.nodes, self.dims, self.module(*x), strict=True)}


def _channel_dim(g: ModelGraph, node: str) -> int:
    f = g.facts[node]
    if f.channel_dim is not None:
        return f.channel_dim
    rank = len(f.shape or ())
    return 1 if rank > 2 else max(rank - 1, 0)


def _plan(graphs: Sequence[ModelGraph], anchor: int, scores: dict[int, dict[str, torch.Tensor]],
          opts: DepthOptions) -> DepthPlan:
    kind = Score.WIDTH if opts.cost == "width" else None
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
             ) -> tuple[list[ModelGraph], list[FuseReport]]:
    out = list(graphs)
    reports: list[FuseReport] = []
    for md in plan.models:
        g = graphs[md.model]
        if opts.balance is Balance.ADD:
            out[md.model] = _insert(g, md.stages)
        else:
            out[md.model], made = _fuse(g, md.stages, data, opts.estimator)
            reports += made
    return out, reports


def _insert(g: ModelGraph, stages: Sequence[StageAlignment]) -> ModelGraph:
    passes = []
    for sa in stages:
        at = tuple(ins.after + 1 for ins in sa.insertions for _ in range(ins.count))
        if at:
            kind = g.stage(sa.stage_shallow).kind
            passes.append(InsertIdentity(sa.stage_shallow, at) if kind is UnitKind.LAYER
                          else InsertZeroResidual(sa.stage_shallow, at))
    try:
        return Pipeline(tuple(passes))(g)
    except PassError as exc:
        raise MergeInputError(f"balance='add' cannot make {g.name} as deep as the anchor: {exc}. Try another depth "
                              "method, or balance='merge' for Linear chains") from exc


def _fuse(g: ModelGraph, stages: Sequence[StageAlignment], data: Iterable | None, estimator: Estimator
          ) -> tuple[ModelGraph, list[FuseReport]]:
    reports = []
    for sa in stages:
        if sa.fusions and g.stage(sa.stage_deep).kind is UnitKind.BLOCK:
            raise MergeInputError(f"balance='merge' fuses Linear layers across their ReLUs (CLAFusion's merge layers); "
                                  f"{sa.stage_deep} of {g.name} is a stage of residual blocks: use balance='add'")
        for fusion in sa.fusions:
            units = tuple(sa.units_deep[j] for j in fusion.deep)
            if data is None:
                raise MergeInputError("balance='merge' estimates each fused ReLU from calibration data; give data")
            try:
                fused = FuseReluSegment(units, estimate_signs(g, units, data, estimator))(g)
            except PassError as exc:
                raise MergeInputError(f"balance='merge' cannot fuse {', '.join(units)} of {g.name}: {exc}. Use "
                                      "balance='add'") from exc
            reports.append(compare(g, fused, data, units, estimator))
            g = fused
    return g, reports
