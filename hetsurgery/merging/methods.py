"""The width-alignment methods ``merge`` knows: a literal table, one function each.

Each takes the traced graphs, the statistics (``None`` for data-free methods), the weights, the anchor,
the merged width of every group and its own typed options, and returns a ``GroupMatch`` for each group
it aligned. The methods that read weights take them from the graphs, or from ``values`` (one mapping per model, by
parameter name) when given: a streamed merge passes readers that load each tensor when it is used. Groups a method cannot handle (no observable features) are left out; the driver fills them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import torch

from hetsurgery.errors import MergeInputError, PassError
from hetsurgery.ir import Capability, ModelGraph
from hetsurgery.ir.lazy import read_rows, shape_of
from hetsurgery.merging.widths import WidthRule
from hetsurgery.merging.zip_plan import plan_zip, prepare_zip
from hetsurgery.passes.pad_width import pad_groups, padded_view
from hetsurgery.plan.signature import joint_signature
from hetsurgery.plan.solvers.mal import mal_match
from hetsurgery.plan.solvers.ot import OTCost, OTMarginals, OTSolver, as_solver, ot_match
from hetsurgery.plan.solvers.ot_weights import ot_weight_matches
from hetsurgery.plan.solvers.permute import permute, stats_head_orders
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch, MalReport

Stats = Mapping[int, GroupStats]
Targets = Mapping[int, int]
Values = Sequence[Mapping[str, torch.Tensor]]  # per model, its parameter values by name (read on demand when streamed)


def plan_average(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
                 targets: Targets) -> dict[int, GroupMatch]:
    return {g.id: GroupMatch.identity(g.id, [x.group(g.id).size for x in graphs], weights)
            for g in graphs[0].permutable()}


def plan_permute(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
                 targets: Targets) -> dict[int, GroupMatch]:
    assert stats is not None
    orders = stats_head_orders(list(graphs[0].permutable()), stats, anchor, lambda gid: joint_signature(graphs, gid))
    return {gid: permute(gid, s, graphs[0].group(gid).structure, weights, anchor, joint_signature(graphs, gid),
                         orders.get(gid)) for gid, s in stats.items()}


def plan_weight(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
                targets: Targets, values: Values | None = None, *, max_sweeps: int = 100, seed: int = 0
                ) -> dict[int, GroupMatch]:
    groups = list(graphs[0].permutable())
    perms_per_model: list[dict[int, torch.Tensor]] = []
    reports = []
    params = _values(graphs, values)
    for k in range(len(graphs)):
        if k == anchor:
            perms_per_model.append({grp.id: torch.arange(grp.size) for grp in groups})
            continue
        perms, report = weight_matching(learned(graphs[anchor], None if values is None else params[anchor]), params[k], groups,
                                        max_sweeps=max_sweeps, seed=seed)
        perms_per_model.append(perms)
        reports.append(report)
    return {grp.id: GroupMatch.from_perms(grp.id, [p[grp.id] for p in perms_per_model], weights,
                                          {"sweeps": [r["sweeps"] for r in reports]}) for grp in groups}


def plan_ot(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
            targets: Targets, *, solver: str = OTSolver.EMD.value, reg: float = 0.01,
            cost: str = OTCost.ACTIVATIONS.value, marginals: str = OTMarginals.PARTIAL.value) -> dict[int, GroupMatch]:
    """Transport every model onto one model's neurons: per group, the anchor or the model of the target width.

    ``cost="activations"`` (default) compares features on the calibration data; ``"weights"`` compares
    incoming weights, producers first, and needs no data. ``solver`` is ``"emd"`` or ``"sinkhorn"``.
    ``marginals="partial"`` (default) carries a model with fewer neurons onto as many of the target's, the others
    staying whole; ``"balanced"`` is OTFusion's transport, which spreads it over all of them (``solvers.ot``).
    """
    onto = {}
    for grp in graphs[0].permutable():
        widths = [g.group(grp.id).size for g in graphs]
        onto[grp.id] = next((k for k in [anchor, *range(len(graphs))] if widths[k] == targets[grp.id]), -1)
        if onto[grp.id] < 0:
            raise MergeInputError(f"group {grp.id} ({grp.label}): ot transports onto one model's neurons; "
                             f"width {targets[grp.id]} is none of {widths}")
    return OT_COSTS[OTCost(cost)](graphs, stats, weights, anchor, onto, as_solver(solver), reg,
                                  OTMarginals(marginals))


def _ot_on_activations(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
                       onto: Targets, solver: OTSolver, reg: float, marginals: OTMarginals
                       ) -> dict[int, GroupMatch]:
    assert stats is not None
    orders = stats_head_orders(list(graphs[0].permutable()), stats, anchor, lambda gid: joint_signature(graphs, gid))
    return {gid: ot_match(gid, s, graphs[0].group(gid).structure, weights, onto[gid], solver=solver, reg=reg,
                          signature=joint_signature(graphs, gid), orders=orders.get(gid), marginals=marginals)
            for gid, s in stats.items()}


def _ot_on_weights(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
                   onto: Targets, solver: OTSolver, reg: float, marginals: OTMarginals) -> dict[int, GroupMatch]:
    return ot_weight_matches(graphs, weights, onto, learned(graphs[anchor]).keys(), solver=solver, reg=reg,
                             marginals=marginals)


OT_COSTS: Mapping[OTCost, Callable[..., dict[int, GroupMatch]]] = MappingProxyType({
    OTCost.ACTIVATIONS: _ot_on_activations,
    OTCost.WEIGHTS: _ot_on_weights,
})


def plan_mal(graphs: Sequence[ModelGraph], stats: Stats | None, weights: Sequence[float], anchor: int,
             targets: Targets, values: Values | None = None, *, alternate: bool = True, max_sweeps: int = 100,
             seed: int = 0) -> dict[int, GroupMatch]:
    """Zero-pad every group to the widest model, then weight-match each model to the anchor in that space."""
    padded_width = {g.id: max(x.group(g.id).size for x in graphs) for g in graphs[0].permutable()}
    padded, params = [], []
    for g, v in zip(graphs, _values(graphs, values), strict=True):
        sizes = {gid: w for gid, w in padded_width.items() if g.group(gid).size < w}
        try:  # every group at once: one new graph per model
            padded.append(pad_groups(g, sizes))
        except PassError as exc:
            raise MergeInputError(f"mal: {exc}") from exc
        params.append(padded[-1].params if values is None else padded_view(g, v, sizes))
    groups = list(padded[anchor].permutable())
    perms: list[dict[int, torch.Tensor]] = []
    reports: list[dict] = []
    for k in range(len(padded)):
        if k == anchor:
            perms.append({gid: torch.arange(w) for gid, w in padded_width.items()})
            continue
        p, rep = weight_matching(learned(padded[anchor], None if values is None else params[anchor]), params[k], groups, max_sweeps=max_sweeps,
                                 seed=seed, alternate=alternate, from_layers=alternate)
        perms.append(p)
        reports.append(rep)
    out = {}
    for gid, w in padded_width.items():
        widths = [g.group(gid).size for g in graphs]
        keep = None if targets[gid] == w else next((k for k in [anchor, *range(len(graphs))]
                                                    if widths[k] == targets[gid]), -1)
        if keep == -1:
            raise MergeInputError(f"group {gid}: mal keeps the padded width {w} or one model's width {widths}, "
                             f"not {targets[gid]}")
        out[gid] = mal_match(gid, [p[gid] for p in perms], widths, weights, keep=keep,
                             reports=[_group_report(r, gid, w) for r in reports])
    return out


def learned(g: ModelGraph, values: Mapping[str, torch.Tensor] | None = None) -> Mapping[str, torch.Tensor]:
    """The graph's parameters without its buffers: weight matching compares what was learned, not
    BatchNorm running statistics (recomputed after merging anyway). ``values`` (default ``g.params``) gives them:
    a streamed model reads each one when it is used (``hetsurgery.stream``), and so does the view returned then."""
    names = {name for name, _ in g.module.named_parameters()}
    if values is None:
        return {name: t for name, t in g.params.items() if name in names}
    return _Only(values, names)


class _Only(Mapping[str, torch.Tensor]):
    """``values`` restricted to ``names``, read on access."""

    def __init__(self, values: Mapping[str, torch.Tensor], names: set[str]) -> None:
        self.source, self.names = values, [n for n in values if n in names]
        self.known = set(self.names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.known:
            raise KeyError(name)
        return self.source[name]

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self.known

    def rows(self, name: str, rows: tuple[int, int]) -> torch.Tensor:
        if name not in self.known:
            raise KeyError(name)
        return read_rows(self.source, name, rows)

    def shape(self, name: str) -> torch.Size | None:
        return shape_of(self.source, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _values(graphs: Sequence[ModelGraph], values: Values | None) -> Sequence[Mapping[str, torch.Tensor]]:
    """Each model's parameter values: its graph's own, or ``values`` (a streamed model's readers)."""
    return [g.params for g in graphs] if values is None else values


def _group_report(report: dict, gid: int, padded_width: int) -> MalReport:
    """What MAL reports per group (weight matching's report read here, once): iterations, the objective after
    each, convergence."""
    if not report["alternating"]:
        return MalReport(padded_width, False, 1, tuple(report["objective"][1:]), False)
    g = report["groups"][gid]
    return MalReport(padded_width, True, int(g["iterations"]), tuple(g["objective"]), bool(g["converged"]))


@dataclass(frozen=True)
class Method:
    needs_data: bool
    plan: Callable[..., dict[int, GroupMatch]]
    widths: Capability | None  # how it changes widths: by ZIP (any width), by PAD (MAL), or never (None)
    default_width: WidthRule = WidthRule.ANCHOR
    full_stats: bool = False  # statistics inside each model too (zip), not only across models
    prepare: Callable[[Sequence[ModelGraph]], tuple[ModelGraph, ...]] | None = None  # exact edits before statistics
    data_free_with: tuple[tuple[str, object], ...] = ()  # option values that make the method need no data
    # reads weights only through weight matching, which widens each piece to float32: a streamed merge hands them
    # as stored (a bfloat16 embedding is half the memory of its float32 copy)
    weights_as_stored: bool = False

    def wants_data(self, options: Mapping[str, object]) -> bool:
        return self.needs_data and not any(options.get(key) == value for key, value in self.data_free_with)


METHODS: Mapping[str, Method] = MappingProxyType({
    "average": Method(needs_data=False, plan=plan_average, widths=None),
    "permute": Method(needs_data=True, plan=plan_permute, widths=None),
    "weight": Method(needs_data=False, plan=plan_weight, widths=None, weights_as_stored=True),
    # ot fuses onto the widest widths, as CLAFusion does: a narrower model is carried partially onto them and
    # loses nothing; onto narrower widths its neurons must be averaged (``width=`` chooses)
    "ot": Method(needs_data=True, plan=plan_ot, widths=Capability.ZIP, default_width=WidthRule.MAX,
                 data_free_with=(("cost", OTCost.WEIGHTS.value),)),
    "zip": Method(needs_data=True, plan=plan_zip, widths=Capability.ZIP, default_width=WidthRule.MAX,
                  full_stats=True, prepare=prepare_zip),
    "mal": Method(needs_data=False, plan=plan_mal, widths=Capability.PAD, weights_as_stored=True),
    "mal-pad": Method(needs_data=False, plan=partial(plan_mal, alternate=False), widths=Capability.PAD,
                      weights_as_stored=True),
})
