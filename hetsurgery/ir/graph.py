"""``ModelGraph``: a traced model, its parameter values, its permutation groups, units and stages.

The graph is a value and owns its structure: its ``GraphModule`` is its own copy (sharing the traced
model's tensors, which nothing writes in place). Passes never edit a graph; they build a new one, with new
tensors for the parameters they touch (untouched tensors are shared, never copied) and a structural copy
of the module that holds exactly those tensors.

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
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from hetsurgery.errors import IRError
from hetsurgery.ir.facts import NodeFacts
from hetsurgery.ir.front_end import FrontEnd
from hetsurgery.ir.group import PermGroup
from hetsurgery.ir.slots import Slot, overlaps
from hetsurgery.ir.structure import with_tensors
from hetsurgery.ir.units import Stage, Unit

if TYPE_CHECKING:  # networkx is imported where a graph view is made, not by `import hetsurgery`
    import networkx as nx


@dataclass(frozen=True)
class ModelGraph:
    """A traced model as permutation groups.

    ``module`` is the fx ``GraphModule`` (structure and code) holding exactly the tensors of ``params``: the
    current value of every parameter and buffer under its ``state_dict`` name. ``fixed_axes`` are parameter
    axes that are not channels by design: kernel taps, an embedding's vocabulary, the features of the model
    input. ``facts`` holds, per fx node name, what the lifter learned (``NodeFacts``); ``units`` and
    ``stages`` are the layers and residual blocks the depth passes work on; ``passes`` are the passes applied
    since tracing, in order, as the pass values themselves (recorded by ``hetsurgery.passes.base.Recorded``; the
    structural ones' ``spec()``, ``hetsurgery.passes.specs``, replay on the traced model). ``front_end`` says
    which front end traced the model and why (``FrontEnd``); ``distrusted`` and ``axis_notes`` say why what is
    not covered is not (``uncovered``).
    """

    module: fx.GraphModule
    params: Mapping[str, torch.Tensor]
    groups: tuple[PermGroup, ...]
    fixed_axes: frozenset[tuple[str, int]] = frozenset()
    name: str = "model"
    example_inputs: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    facts: Mapping[str, NodeFacts] = field(default_factory=dict, repr=False)
    units: tuple[Unit, ...] = field(default=(), repr=False)
    stages: tuple[Stage, ...] = field(default=(), repr=False)
    passes: tuple[Any, ...] = field(default=(), repr=False)  # the passes applied since tracing (pass values)
    distrusted: Mapping[str, str] = field(default_factory=dict, repr=False)  # parameter -> a use no rule follows
    axis_notes: Mapping[tuple[str, int], str] = field(default_factory=dict, repr=False)  # why an axis has no group
    front_end: FrontEnd = field(default=FrontEnd(), repr=False)  # how the model became this fx graph

    def __post_init__(self) -> None:
        for attr in ("params", "facts", "distrusted", "axis_notes"):
            value = getattr(self, attr)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, attr, MappingProxyType(dict(value)))

    # -- access -------------------------------------------------------------------------------
    def group(self, gid: int) -> PermGroup:
        for grp in self.groups:
            if grp.id == gid:
                return grp
        raise IRError(f"{self.name}: no group {gid}; groups are 0..{len(self.groups) - 1}")

    def permutable(self) -> Iterator[PermGroup]:
        """The groups that may be permuted (not frozen)."""
        return (g for g in self.groups if g.perm_ok)

    def unit(self, key: str) -> Unit:
        for u in self.units:
            if u.key == key:
                return u
        raise IRError(f"{self.name}: no unit {key!r}; the units are {', '.join(u.key for u in self.units) or 'none'}")

    def stage(self, key: str) -> Stage:
        for st in self.stages:
            if st.key == key:
                return st
        raise IRError(f"{self.name}: no stage {key!r}; the stages are "
                      f"{', '.join(st.key for st in self.stages) or 'none'}")

    def with_updates(
        self, params: Mapping[str, torch.Tensor], groups: tuple[PermGroup, ...] | None = None
    ) -> ModelGraph:
        """A new graph with some parameters replaced (and optionally new groups); its module is a structural
        copy holding the new tensors (the others shared), layers resized where the shapes changed. Nothing runs:
        the node metadata (``tensor_meta``, ``facts``) keep the shapes the graph was lifted with; lifting the
        lowered module again (``lift_graph``) measures the new ones."""
        merged = dict(self.params)
        merged.update(params)
        module = with_tensors(self.module, merged, share=True)
        return replace(self, module=module, params=MappingProxyType(merged),
                       groups=self.groups if groups is None else groups)

    # -- views --------------------------------------------------------------------------------
    def dataflow(self) -> nx.DiGraph:
        """The networkx DiGraph of the fx nodes: an edge from each node to the nodes that read its output.

        Node attributes: ``op``, ``target`` (text), ``kind`` (``OpKind``), ``shape``, ``channel_dim``,
        ``reads`` / ``writes`` (group ids), ``range``, ``nonneg``, ``activation`` (``Activation`` or ``None``)
        and ``unit`` (the key of the unit the node belongs to, or ``None``).
        """
        import networkx as nx

        unit_of = {n: u.key for u in self.units for n in u.nodes}
        dg = nx.DiGraph(name=self.name)
        for node in self.module.graph.nodes:
            f = self.facts.get(node.name)
            dg.add_node(node.name, op=node.op, target=_target_text(node), kind=f.kind if f else None,
                        shape=f.shape if f else None, channel_dim=f.channel_dim if f else None,
                        reads=f.reads if f else (), writes=f.writes if f else (), range=f.range if f else None,
                        nonneg=bool(f and f.nonneg), activation=f.activation if f else None,
                        unit=unit_of.get(node.name))
            for src in node.all_input_nodes:
                dg.add_edge(src.name, node.name)
        return dg

    def to_networkx(self) -> nx.DiGraph:
        """A bipartite projection of ``dataflow()``: layer nodes ``("layer", name)`` (the modules and attributes
        that hold parameters) and group nodes ``("group", id)``; edges run from a layer to the groups its
        output carries and from a group to the layers that read it."""
        import networkx as nx

        dg = nx.DiGraph(name=self.name)
        for grp in self.groups:
            dg.add_node(("group", grp.id), kind="group", size=grp.size, structure=str(grp.structure),
                        frozen=grp.frozen, label=grp.label)
        owners = {owner_of(name) for name in self.params} | set(self.params)
        flow = self.dataflow()
        for _, data in flow.nodes(data=True):
            node_target = data["target"]
            if data["op"] not in ("call_module", "get_attr") or node_target not in owners:
                continue
            layer = ("layer", node_target)
            dg.add_node(layer, kind="layer")
            for gid in data["writes"]:
                dg.add_edge(layer, ("group", gid))
            for gid in data["reads"]:
                if gid not in data["writes"]:
                    dg.add_edge(("group", gid), layer)
        return dg

    def summary(self) -> str:
        """A table of the groups: id, size, structure, slots, what they admit, and why frozen (after a line on
        the front end, unless torch.fx traced the model as it is), then every parameter not covered and why."""
        w = max([8, *(len(str(g.structure)) for g in self.groups)])
        head = f"{'id':>4} {'size':>6} {'blocks':>{w}} {'slots':>5} {'pad':>3} {'zip':>3}  label / frozen reason"
        lines = [f"ModelGraph {self.name}: {len(self.groups)} groups, "
                 f"{sum(g.perm_ok for g in self.groups)} permutable, coverage {self.coverage():.3f}",
                 *([] if self.front_end.plain else [str(self.front_end)]), head]
        missing = self.uncovered()
        for g in self.groups:
            flags = f"{'y' if g.pad_ok else '-':>3} {'y' if g.zip_ok else '-':>3}"
            why = f"  [frozen: {g.frozen}]" if g.frozen else ""
            tied = f" (heads move with {', '.join(map(str, g.heads_with))})" if g.heads_with else ""
            lines.append(f"{g.id:>4} {g.size:>6} {g.structure!s:>{w}} {len(g.slots):>5} {flags}  {g.label}{tied}{why}")
        if missing:
            lines.append(f"{len(missing)} parameters not covered:")
            lines += [f"  {name}: {why}" for name, why in missing.items()]
        return "\n".join(lines + self._units_summary())

    def _units_summary(self) -> list[str]:
        if not self.units:
            return []
        lines = [f"{len(self.units)} units, {len(self.stages)} stages"]
        staged = {k for st in self.stages for k in st.units}
        by_key = {u.key: u for u in self.units}
        for st in self.stages:
            members = ", ".join(k + (" (fixed)" if by_key[k].fixed else "") + (f" [{by_key[k].origin}]"
                                if by_key[k].origin else "") for k in st.units)
            lines.append(f"  {st.key} ({st.kind.value}s, reads {st.entry}): {members}")
        loose = [u for u in self.units if u.key not in staged]
        if loose:
            lines.append("  outside stages: " + ", ".join(f"{u.key} ({u.fixed})" if u.fixed else u.key for u in loose))
        return lines

    def dump(self) -> str:
        """A stable text form of the groups and their slots, for golden tests and diffs."""
        out = []
        for g in self.groups:
            state = f" frozen={g.frozen!r}" if g.frozen else ""
            out.append(f"group {g.id} size={g.size} blocks={g.structure}{state} label={g.label}")
            for s in sorted(g.slots, key=Slot.sort_key):
                extra = "".join(f" {k}={v}" for k, v in (("offset", s.offset), ("inner", s.inner),
                                                          ("chunks", s.chunks), ("stride", s.stride),
                                                          ("run", s.run), ("skip", s.skip))
                                if v not in (0, 1))
                out.append(f"  {s.role.value:<7} {s.param}[{s.dim}]{extra}")
        return "\n".join(out)

    def coverage(self) -> float:
        """Fraction of parameter elements whose every axis is understood (and used in a way the rules follow).

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
            if name not in self.distrusted and all(t.shape[d] == 1 or (name, d) in self.fixed_axes
                   or covered.get((name, d), 0) >= t.shape[d] for d in range(t.dim())):
                good += t.numel()
        return good / total if total else 1.0

    def uncovered(self) -> dict[str, str]:
        """Why each parameter ``coverage`` does not count is not understood, in parameter order: the use no rule
        follows (the node and the op), the frozen group that holds one of its axes, or the axis no rule gave
        a meaning (with the nodes that read the parameter).

        >>> import torch, hetsurgery as hs
        >>> hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4)).uncovered()
        {}
        """
        covered = _covered_indices(self)
        frozen: dict[tuple[str, int], str] = {}
        for grp in self.groups:
            if grp.frozen is not None and not grp.by_design:
                for s in grp.slots:
                    frozen.setdefault((s.param, s.dim), f"group {grp.id} ({grp.label}) is frozen: {grp.frozen}")
        out = {}
        for name, t in self.params.items():
            if not t.is_floating_point():
                continue
            bad = [d for d in range(t.dim()) if t.shape[d] != 1 and (name, d) not in self.fixed_axes
                   and covered.get((name, d), 0) < t.shape[d]]
            if not bad and name not in self.distrusted:
                continue
            why = self.distrusted.get(name) or next((frozen[(name, d)] for d in bad if (name, d) in frozen), None) \
                or next((f"dim {d}: {self.axis_notes[(name, d)]}" for d in bad if (name, d) in self.axis_notes), None)
            out[name] = why or (f"no channel rule gives dim {bad[0]} a meaning (read at "
                                f"{', '.join(self._readers(name)) or 'no node'})")
        return out

    def _readers(self, param: str) -> list[str]:
        """The fx nodes that read ``param``: its ``get_attr`` nodes' users, or the module that owns it."""
        owner = owner_of(param)
        out = []
        for node in self.module.graph.nodes:
            if node.op == "get_attr" and node.target == param:
                out += [f"node {u.name}" for u in node.users]
            elif node.op == "call_module" and node.target == owner:
                out.append(f"node {node.name}")
        return list(dict.fromkeys(out))[:3]

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
            count[(s.param, s.dim)] = count.get((s.param, s.dim), 0) + s.extent(grp.size)
    return count


def _problems(g: ModelGraph) -> Iterator[str]:
    yield from _module_problems(g)
    seen_ids: set[int] = set()
    spans: dict[tuple[str, int], list[tuple[int, int, int, Slot, int]]] = {}
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
            spans.setdefault((s.param, s.dim), []).append((lo, hi, grp.id, s, grp.size))
        for site in grp.sites:
            if site.node not in node_names:
                yield f"group {grp.id}: site on unknown node {site.node!r}"
    for (param, dim), items in spans.items():
        items.sort(key=lambda item: item[:3])
        for (lo1, hi1, g1, s1, n1), (lo2, _hi2, g2, s2, n2) in itertools.combinations(items, 2):
            if g1 != g2 and overlaps(s1, n1, s2, n2):
                yield f"groups {g1} and {g2} overlap on {param}[{dim}] ({lo1}:{hi1} and {lo2}:…)"



def _module_problems(g: ModelGraph) -> Iterator[str]:
    """``params`` and the module's parameters and buffers: the same names and shapes."""
    held = {**dict(g.module.named_parameters()), **dict(g.module.named_buffers())}
    for name in sorted(set(held) - set(g.params)):
        yield f"the module holds {name}, which params lacks"
    for name in sorted(set(g.params) - set(held)):
        yield f"params holds {name}, which the module lacks"
    for name in sorted(set(held) & set(g.params)):
        if tuple(held[name].shape) != tuple(g.params[name].shape):
            yield f"{name} has shape {tuple(g.params[name].shape)} in params but {tuple(held[name].shape)} in the module"


def _target_text(node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr", "call_method"):
        return str(node.target)
    return getattr(node.target, "__qualname__", str(node.target))
