"""``ModelGraph``: a traced model, its parameter values, and its permutation groups.

The graph is a value. Passes never edit one; they build a new one with ``dataclasses.replace`` and
new tensors for the parameters they touch (untouched tensors are shared, never copied).

>>> import torch, hetsurgery
>>> g = hetsurgery.trace(hetsurgery.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4))
>>> [grp.size for grp in g.groups if grp.perm_ok]
[8]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import networkx as nx
import torch
from torch import fx

from hetsurgery.errors import IRError
from hetsurgery.ir.group import PermGroup
from hetsurgery.ir.slots import Role, Slot


@dataclass(frozen=True)
class ModelGraph:
    """A traced model as permutation groups.

    ``module`` is the fx ``GraphModule`` (structure and code); ``params`` holds the current value of every
    parameter and buffer under its ``state_dict`` name and is the source of truth once a pass ran.
    ``fixed_axes`` are parameter axes that are not channels by design: kernel taps, an embedding's
    vocabulary, the features of the model input.
    """

    module: fx.GraphModule
    params: Mapping[str, torch.Tensor]
    groups: tuple[PermGroup, ...]
    fixed_axes: frozenset[tuple[str, int]] = frozenset()
    name: str = "model"
    example_inputs: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, MappingProxyType):
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    # -- access -------------------------------------------------------------------------------
    def group(self, gid: int) -> PermGroup:
        for grp in self.groups:
            if grp.id == gid:
                return grp
        raise IRError(f"{self.name}: no group {gid}; groups are 0..{len(self.groups) - 1}")

    def permutable(self) -> Iterator[PermGroup]:
        """The groups that may be permuted (not frozen)."""
        return (g for g in self.groups if g.perm_ok)

    def with_updates(
        self, params: Mapping[str, torch.Tensor], groups: tuple[PermGroup, ...] | None = None
    ) -> ModelGraph:
        """A new graph with some parameters replaced (and optionally new groups)."""
        merged = dict(self.params)
        merged.update(params)
        return replace(self, params=MappingProxyType(merged), groups=self.groups if groups is None else groups)

    # -- views --------------------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """A bipartite DiGraph: layer nodes ``("layer", name)`` and group nodes ``("group", id)``.

        Edges run from a layer to the groups it produces and from a group to the layers that consume it.
        """
        dg = nx.DiGraph(name=self.name)
        for grp in self.groups:
            gnode = ("group", grp.id)
            dg.add_node(gnode, kind="group", size=grp.size, structure=str(grp.structure),
                        frozen=grp.frozen, label=grp.label)
            for slot in grp.slots:
                lnode = ("layer", owner_of(slot.param))
                dg.add_node(lnode, kind="layer")
                if slot.role is Role.PRODUCE:
                    dg.add_edge(lnode, gnode)
                else:
                    dg.add_edge(gnode, lnode)
        return dg

    def summary(self) -> str:
        """A table of the groups: id, size, structure, slots, what they admit, and why frozen."""
        head = f"{'id':>4} {'size':>6} {'blocks':>8} {'slots':>5} {'pad':>3} {'zip':>3}  label / frozen reason"
        lines = [f"ModelGraph {self.name}: {len(self.groups)} groups, "
                 f"{sum(g.perm_ok for g in self.groups)} permutable, coverage {self.coverage():.3f}", head]
        for g in self.groups:
            flags = f"{'y' if g.pad_ok else '-':>3} {'y' if g.zip_ok else '-':>3}"
            why = f"  [frozen: {g.frozen}]" if g.frozen else ""
            lines.append(f"{g.id:>4} {g.size:>6} {g.structure!s:>8} {len(g.slots):>5} {flags}  {g.label}{why}")
        return "\n".join(lines)

    def dump(self) -> str:
        """A stable text form of the groups and their slots, for golden tests and diffs."""
        out = []
        for g in self.groups:
            state = f" frozen={g.frozen!r}" if g.frozen else ""
            out.append(f"group {g.id} size={g.size} blocks={g.structure}{state} label={g.label}")
            for s in sorted(g.slots, key=Slot.sort_key):
                extra = "".join(f" {k}={v}" for k, v in (("offset", s.offset), ("inner", s.inner),
                                                          ("chunks", s.chunks)) if v not in (0, 1))
                out.append(f"  {s.role.value:<7} {s.param}[{s.dim}]{extra}")
        return "\n".join(out)

    def coverage(self) -> float:
        """Fraction of parameter elements whose every axis is understood.

        An axis is understood when it is not a channel by design (kernel taps, vocabulary, size 1, the
        model input's features) or when every index along it belongs to a group that is permutable or
        frozen by design (the model output). Axes the tool gave up on (unknown ops) count against it.
        """
        covered = _covered_indices(self)
        total = good = 0
        for name, t in self.params.items():
            if not t.is_floating_point():
                continue
            total += t.numel()
            if all(t.shape[d] == 1 or (name, d) in self.fixed_axes
                   or covered.get((name, d), 0) >= t.shape[d] for d in range(t.dim())):
                good += t.numel()
        return good / total if total else 1.0

    # -- checks -------------------------------------------------------------------------------
    def verify(self) -> None:
        """Raise ``IRError`` listing every inconsistency between the groups and the parameters."""
        problems = list(_problems(self))
        if problems:
            raise IRError(f"{self.name}: the ModelGraph is inconsistent:\n  " + "\n  ".join(problems[:20]))


def owner_of(param: str) -> str:
    """The layer a parameter belongs to: ``layer1.0.conv1.weight`` -> ``layer1.0.conv1``."""
    return param.rsplit(".", 1)[0] if "." in param else param


def _covered_indices(g: ModelGraph) -> dict[tuple[str, int], int]:
    count: dict[tuple[str, int], int] = {}
    for grp in g.groups:
        if grp.frozen is not None and not grp.by_design:
            continue
        for s in grp.slots:
            lo, hi = s.span(grp.size)
            count[(s.param, s.dim)] = count.get((s.param, s.dim), 0) + (hi - lo)
    return count


def _problems(g: ModelGraph) -> Iterator[str]:
    seen_ids: set[int] = set()
    spans: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    node_names = {n.name for n in g.module.graph.nodes}
    for grp in g.groups:
        if grp.id in seen_ids:
            yield f"group id {grp.id} appears twice"
        seen_ids.add(grp.id)
        if grp.structure.total != grp.size:
            yield f"group {grp.id}: structure {grp.structure} does not cover size {grp.size}"
        for s in grp.slots:
            t = g.params.get(s.param)
            if t is None:
                yield f"group {grp.id}: slot on unknown parameter {s.param!r}"
                continue
            if not 0 <= s.dim < t.dim():
                yield f"group {grp.id}: {s.param} has no dim {s.dim} (shape {tuple(t.shape)})"
                continue
            lo, hi = s.span(grp.size)
            if hi > t.shape[s.dim]:
                yield (f"group {grp.id} (size {grp.size}): slot {s.param}[{s.dim}] span {lo}:{hi} exceeds "
                       f"shape {tuple(t.shape)}")
            if s.chunks > 1 and (t.shape[0] % s.chunks or grp.size % s.chunks):
                yield f"group {grp.id}: {s.param} cannot be cut into {s.chunks} chunks"
            if grp.perm_ok and (s.param, s.dim) in g.fixed_axes:  # permuting it would break the other use
                yield (f"group {grp.id} ({grp.label}) is permutable but its slot {s.param}[{s.dim}] is an axis "
                       "fixed by design (vocabulary, model input, kernel taps)")
            spans.setdefault((s.param, s.dim), []).append((lo, hi, grp.id))
        for site in grp.sites:
            if site.node not in node_names:
                yield f"group {grp.id}: site on unknown node {site.node!r}"
    for (param, dim), items in spans.items():
        items.sort()
        for (lo1, hi1, g1), (lo2, _hi2, g2) in itertools.pairwise(items):
            if lo2 < hi1 and g1 != g2:
                yield f"groups {g1} and {g2} overlap on {param}[{dim}] ({lo1}:{hi1} and {lo2}:…)"

