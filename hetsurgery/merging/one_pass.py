"""A depth merge that runs the models over the calibration data once.

The unit similarities that decide the depth plan read the first ``depth_samples`` samples; the width statistics
read all of them, on the *balanced* models, which exist only once the plan is made. Yet the balanced models compute
nothing new where the statistics look: an inserted identity unit's features are its predecessor's, an inserted
zero-residual block hands its input on (``merging.inserted.zero_branches``), and the groups inside inserted blocks
are matched without data (``real_interiors``). So every site of a balanced model shows the features of a node of
the *original* model.

While the similarity pass runs the original models, ``Gather`` therefore accumulates each site's own moments and
the cross-moments of every pair of sites the plan could put together (``plan.candidates``): an anchor's site with
each site of the other model in the same stage, of the same kind (inside one unit, or shared by several) and the
same positions, whose unit insertions can bring to the anchor's site (``_reachable``). SMA and LMA compare the
units' outputs: their moments are gathered too, with the cross-moments of every pair of a stage's units, and the
unit similarities are the linear CKA of those (``Gather.unit_scores``), not a second accumulation of the same
products (CLA compares pre-activations and keeps its own CKA). Once the models are balanced, each site of the balanced model is traced back to the original node
it shows (``sources``: through the inserted units, checked on the example inputs), the chosen pairs are joined into
each group's accumulator (``seeded``), and the statistics pass goes on from the first sample the similarity pass
did not read. The statistics are those of the two-pass merge, up to float rounding (the sums are added in
another order).

It applies to two models balanced by ``add`` with exact insertions, merged in one process without a memory budget
(``possible``); anything else, or a site that cannot be traced back, takes the two passes. What it costs: in the
first ``depth_samples`` samples, the cross-moments of the pairings the plan does not choose, and the features of
every site of both models held for one batch at a time (bench ``depth_cost``: a ResNet-20 x4 with a ResNet-32 x4
over 2048 images took 0.79 of the two-pass time at 1.1 times its peak memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import torch

from hetsurgery.ir import ModelGraph, Site
from hetsurgery.ir.lowering import tap_module
from hetsurgery.merging.balance import insertion
from hetsurgery.merging.correspond import paired_nodes
from hetsurgery.merging.depth_options import DepthCost
from hetsurgery.merging.inserted import interior_groups
from hetsurgery.merging.options import MergeOptions
from hetsurgery.merging.similarity import StagePair, channel_dim
from hetsurgery.merging.zip_plan import normalised_groups
from hetsurgery.passes import InsertPostNormBlock
from hetsurgery.plan.accumulate import BlockAccumulator
from hetsurgery.plan.candidates import Candidates, View
from hetsurgery.plan.depth import Balance, DepthPlan
from hetsurgery.plan.depth.cka import CKAError


def possible(graphs: Sequence[ModelGraph], o: MergeOptions, *, alone: bool) -> bool:
    """Whether a depth merge of ``graphs`` under ``o`` can read the data once: two models balanced by exact
    insertions, the unit similarities from data, the models run whole in one process (``alone``) without a memory
    budget, and no stream normalised over its channels. (An inserted block's LayerNorm or RMSNorm output is no
    node of the original model; and zip folds such norms into their readers before its statistics, so the
    models it gathers on would not be the ones it reads.) The driver still checks that the method's preparation
    left the balanced models as they are."""
    d = o.depth
    if d is None or d.balance is not Balance.ADD or d.cost is DepthCost.WIDTH or len(graphs) != 2:
        return False
    if o.memory_budget is not None or not alone or any(normalised_groups(g) for g in graphs):
        return False
    return not any(insertion(g, st.key) is InsertPostNormBlock for g in graphs for st in g.stages if len(st))


class Gather:
    """Fed by the similarity pass (``similarity.Extra``): the statistics of every site pair a depth plan with
    ``anchor`` may choose between the original ``graphs``. With ``exits`` (SMA and LMA compare the units' outputs)
    it also gathers every unit output's moments and the cross-moments of the outputs of each stage's units, and the
    unit similarities are made of them (``unit_scores``) instead of a separate linear CKA of the same features."""

    def __init__(self, graphs: Sequence[ModelGraph], anchor: int, full: bool, *, exits: bool = False) -> None:
        self.graphs, self.anchor = tuple(graphs), anchor
        views = {k: _views(g, k, exits=k != anchor) for k, g in enumerate(graphs)}
        pairs = [(a, b) for a, (key_a, at_a) in views[anchor].items() for k in views if k != anchor
                 for b, (key_b, at_b) in views[k].items() if key_a == key_b and _reachable(at_b, at_a)]
        self.exits = {k: {u.key: _exit_view(g, k, u.key) for u in g.units} for k, g in enumerate(graphs)} if exits \
            else {}
        grams = [v for by_unit in self.exits.values() for v in by_unit.values()]
        for st in graphs[anchor].stages if exits else ():
            deep = [self.exits[anchor][u] for u in st.units]
            pairs += [(a, self.exits[k][u]) for k in self.exits if k != anchor for u in graphs[k].stage(st.key).units
                      for a in deep]
        self.candidates = Candidates([*(v for vs in views.values() for v in vs), *grams], pairs, full, grams)

    def nodes(self, model: int) -> list[str]:
        return self.candidates.nodes(model)

    def add(self, outs: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        self.candidates.add(outs)

    def unit_scores(self, pairs: Sequence[StagePair]) -> list[torch.Tensor]:
        """Per stage pair (the other model's units the rows, the anchor's the columns), the linear CKA of the units'
        outputs (``Candidates.cka``)."""
        out = []
        for p in pairs:
            rows, cols = (self.graphs[p.shallow].stage(p.stage_shallow).units,
                          self.graphs[p.deep].stage(p.stage_deep).units)
            m = torch.zeros(len(rows), len(cols), dtype=torch.float64)
            for j, u in enumerate(cols):
                a = self.exits[p.deep][u]
                if self.candidates.selves[a].n < 2:
                    raise CKAError(f"stage pair {p.stage_deep!r}: unit {u!r} has {self.candidates.selves[a].n} "
                                   "calibration samples; CKA needs at least two: give more data")
                for i, w in enumerate(rows):
                    m[i, j] = self.candidates.cka(a, self.exits[p.shallow][w])
            if not bool(torch.isfinite(m).all()):
                raise CKAError(f"stage pair {p.stage_deep!r}: the units' outputs are not finite (NaN or Inf)")
            out.append(m)
        return out


def _exit_view(g: ModelGraph, k: int, unit: str) -> View:
    """The view of ``unit``'s output, every channel (what SMA and LMA compare)."""
    node = g.unit(unit).exit
    dim = channel_dim(g, node)
    shape = g.facts[node].shape
    assert shape is not None
    return View(k, Site(node, dim), shape[dim])


def seeded(gather: Gather, graphs: Sequence[ModelGraph], own: Sequence[ModelGraph], depth: DepthPlan,
           shortcuts: Sequence[Mapping[str, str]], inserted: Sequence[Iterable[str]], gids: Iterable[int]
           ) -> dict[int, BlockAccumulator] | None:
    """Per group of ``gids``, its accumulator over the samples ``gather`` saw, the balanced ``graphs`` (on the
    anchor's names; ``own``: the same before they were carried onto them) reading the original models' features;
    ``None`` where a site of a balanced model cannot be traced back to a site ``gather`` accumulated."""
    anchor = depth.anchor
    k = 1 - anchor
    gids = list(gids)
    nodes = [s.node for gid in gids for s in graphs[k].group(gid).sites]
    found = sources(graphs[anchor], graphs[k], own[k], gather.graphs[k], shortcuts[k], inserted[k], nodes)
    if found is None:
        return None
    cands = gather.candidates
    out: dict[int, BlockAccumulator] = {}
    for gid in gids:
        sites = []
        for site_a, site_k in zip(graphs[anchor].group(gid).sites, graphs[k].group(gid).sites, strict=True):
            source = found.get(site_k.node)
            if source is None:
                return None
            a = View(anchor, site_a, graphs[anchor].group(gid).size)
            b = View(k, replace(site_k, node=source), graphs[k].group(gid).size)
            if not cands.has(a, b):
                return None
            sites.append((a, b))
        if sites:
            out[gid] = cands.accumulator(sites, anchor_first=anchor == 0)
    return out


def sources(anchor: ModelGraph, carried: ModelGraph, own: ModelGraph, original: ModelGraph,
            shortcuts: Mapping[str, str], inserted: Iterable[str], sites: Iterable[str]) -> dict[str, str] | None:
    """For each of the ``sites`` (nodes) of ``carried`` (a balanced model on ``anchor``'s names; ``own``: the same
    on its own names), the node of ``original`` (the model before balancing) whose output it shows: a node of an inserted unit
    shows what it hands on (a zero-branch add its stream, ``shortcuts``; an identity layer or an activation in an
    identity unit its input), any other node the original node it was carried from. Checked on the example inputs;
    ``None`` where a node cannot be traced or the check fails."""
    nodes = {n.name: n for n in carried.module.graph.nodes}
    in_inserted = {n for key in inserted for n in carried.unit(key).nodes}
    paired = {a.name: b.name for a, b in paired_nodes(anchor, own)}
    known = {n.name for n in original.module.graph.nodes}
    out: dict[str, str] = {}
    for node in dict.fromkeys(sites):
        name = node
        while name in in_inserted:
            if name in shortcuts:
                name = shortcuts[name]
                continue
            operands = [a for a in nodes[name].all_input_nodes if a.op != "get_attr"]
            if len(operands) != 1:
                break
            name = operands[0].name
        source = paired.get(name) if name not in in_inserted else None
        if source is None or source not in known:
            continue
        out[node] = source
    if not out or not _same_outputs(carried, original, out):
        return None
    return out


def _same_outputs(carried: ModelGraph, original: ModelGraph, found: Mapping[str, str]) -> bool:
    """The traced nodes show the same values on the example inputs (up to the rounding of an identity BatchNorm)."""
    names = list(found)
    with torch.no_grad():
        mine = tap_module(carried, names)(*carried.example_inputs)
        theirs = tap_module(original, [found[n] for n in names])(*carried.example_inputs)
    for a, b in zip(mine, theirs, strict=True):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6 * (1.0 + float(b.abs().max()))):
            return False
    return True


def _reachable(shallow: tuple[int, int] | None, deep: tuple[int, int] | None) -> bool:
    """Whether the unit at ``shallow`` (its position in its stage, the stage's length) may stand at ``deep`` once
    units are inserted: never in front of a stage's first unit, the order kept, so unit ``i`` of ``n`` lands at a
    position from ``i`` to ``i + m - n`` of ``m``, and a position shows the last unit at or before it."""
    if shallow is None or deep is None:
        return shallow == deep
    (i, n), (p, m) = shallow, deep
    return p - (m - n) <= i <= p


def _views(g: ModelGraph, k: int, *, exits: bool
           ) -> dict[View, tuple[tuple[object, ...], tuple[int, int] | None]]:
    """Every site of ``g``'s permutable groups (and, with ``exits``, every unit's output, which a balanced model may
    show at a site where the model itself has none: the last block of a stage read only after a pooling), with
    what a plan's pairing must keep: the stage (``None`` outside any), whether the group lies inside one unit, and
    the positions that count as samples; and where its unit stands in its stage (position, length)."""
    stage_of = {u: st for st in g.stages for u in st.units}
    unit_of = {n: u.key for u in g.units for n in u.nodes}
    inside = {grp.id for u in g.units for grp in interior_groups(g, u)}
    sites = [(site, grp.size, grp.id in inside) for grp in g.permutable() for site in grp.sites]
    if exits:
        seen = {site.node for site, _, _ in sites}
        for u in g.units:
            shape = g.facts[u.exit].shape
            if u.exit not in seen and shape is not None:
                dim = channel_dim(g, u.exit)
                sites.append((Site(u.exit, dim), shape[dim], False))
    out: dict[View, tuple[tuple[object, ...], tuple[int, int] | None]] = {}
    for site, width, within in sites:
        shape = g.facts[site.node].shape
        if shape is None:
            continue
        unit = unit_of.get(site.node)
        stage = stage_of.get(unit) if unit is not None else None
        key = (stage.key if stage is not None else None, within, tuple(shape[:site.dim]),
               tuple(shape[site.dim + 1:]), site.inner)
        out[View(k, site, width)] = (key, (stage.units.index(unit), len(stage.units)) if stage is not None else None)
    return out
