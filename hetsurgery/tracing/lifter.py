"""The lifter's state: group variables joined by union-find, and what each variable is told.

Rules (``hetsurgery.tracing.rules``) call these methods while the walk visits the fx nodes in order;
``groups()`` then turns the union-find classes into ``PermGroup``s.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx

from hetsurgery.ir import Blocks, PermGroup, Role, Site, Slot
from hetsurgery.tracing.values import MODEL_INPUT, Chan, Free, Items, Param, Value, vars_of


class _Named:
    """Stands in for an fx node in messages about joins that no single node causes."""

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass
class _Var:
    size: int
    label: str
    block: int  # permutations may act only inside consecutive blocks of this many channels
    key: str  # the node that made it, with "#i" for the i-th variable one node makes (attention: q/k and v)
    frozen: list[tuple[str, bool]] = field(default_factory=list)  # (reason, by design)
    no_pad: list[str] = field(default_factory=list)
    no_zip: list[str] = field(default_factory=list)


class Lifter:
    """Mutable state of one lift; lives only inside ``lift_graph``."""

    def __init__(self, gm: fx.GraphModule, name: str) -> None:
        self.gm = gm
        self.name = name
        self.modules = dict(gm.named_modules())
        named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
        self.tensors: dict[str, torch.Tensor] = dict(named)
        first: dict[int, str] = {}
        # tied tensors (one tensor under several names) are known by the first name
        self.canonical = {n: first.setdefault(id(t), n) for n, t in named}
        self.env: dict[fx.Node, Value] = {}
        self._vars: list[_Var] = []
        self._parent: list[int] = []
        self.slots: list[tuple[int, Slot]] = []
        self.sites: list[tuple[int, Site]] = []
        self.producer_sites: list[tuple[int, Site]] = []
        self.fixed_axes: dict[tuple[str, int], str] = {}  # axis -> what fixes it ("the vocabulary axis of ...")
        self.untrusted_params: dict[str, str] = {}
        self._made: dict[str, int] = {}  # node name -> variables made there
        self.group_of: dict[int, int] = {}  # union-find root -> group id, once groups() ran

    # -- variables ------------------------------------------------------------------------------
    def new_var(self, size: int, node: fx.Node) -> int:
        made = self._made.get(node.name, 0)
        self._made[node.name] = made + 1
        self._vars.append(_Var(size=size, label=node.name, block=size, key=node.name + (f"#{made}" if made else "")))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, v: int) -> int:
        while self._parent[v] != v:
            self._parent[v] = self._parent[self._parent[v]]
            v = self._parent[v]
        return v

    def union(self, a: int, b: int, node: fx.Node | _Named) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._vars[ra].size != self._vars[rb].size:
            why = f"channel counts {self._vars[ra].size} and {self._vars[rb].size} meet at node {node.name}"
            self.freeze([ra, rb], why)
            return
        self._parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, vs: list[int], reason: str, by_design: bool = False) -> None:
        for v in vs:
            self._vars[v].frozen.append((reason, by_design))

    def block_pad(self, vs: list[int], reason: str) -> None:
        for v in vs:
            self._vars[v].no_pad.append(reason)

    def block_zip(self, vs: list[int], reason: str) -> None:
        for v in vs:
            self._vars[v].no_zip.append(reason)

    def fix_width(self, vs: list[int], reason: str) -> None:
        self.block_pad(vs, reason)
        self.block_zip(vs, reason)

    def constrain_blocks(self, v: int, block: int) -> None:
        var = self._vars[v]
        var.block = math.gcd(var.block, block)

    def size(self, v: int) -> int:
        return self._vars[v].size

    # -- slots and sites ------------------------------------------------------------------------
    def slot(self, v: int, slot: Slot) -> None:
        self.slots.append((v, replace(slot, param=self.canonical.get(slot.param, slot.param))))

    def add_slots(self, value: Chan, param: str | None, dim: int, role: Role) -> None:
        """One slot per segment of ``value`` on axis ``dim`` of ``param`` (skipped when absent)."""
        if param is None or param not in self.tensors:
            return
        for seg, at in value.offsets():
            self.slot(seg.var, Slot(param, dim, at, seg.inner, role))

    def consume(self, value: Chan, node: fx.Node, param: str, dim: int) -> None:
        """``param``'s axis ``dim`` reads ``value`` (the output of ``node``): consumer slots and sites."""
        self.add_slots(value, param, dim, Role.CONSUME)
        self.observe(value, node)

    def observe(self, value: Chan, node: fx.Node, producer: bool = False) -> None:
        target = self.producer_sites if producer else self.sites
        for seg, at in value.offsets():
            target.append((seg.var, Site(node.name, value.dim, at, seg.inner)))

    def fix_axes(self, param: str | None, dims: range | list[int], why: str) -> None:
        """Axes ``dims`` of ``param`` are not channels by design; ``why`` completes "<param> dim <d> is ..."."""
        if param is not None:
            for d in dims:
                self.fixed_axes.setdefault((self.canonical.get(param, param), d), why)

    def distrust(self, param: str, reason: str) -> None:
        """Any group with a slot on ``param`` will be frozen: the parameter is used in a way we do not follow."""
        self.untrusted_params.setdefault(self.canonical.get(param, param), reason)

    def give_up(self, values: Sequence[object], reason: str) -> Free:
        """Freeze everything ``values`` carry; the result depends on no free group."""
        for v in values:
            self.freeze(vars_of(v), reason)
            for p in params_in(v):
                self.distrust(p, reason)
        return Free(f"output of {reason}")

    def module_params(self, target: str) -> list[str]:
        prefix = f"{target}."
        return [n for n in self.tensors if n.startswith(prefix)]

    # -- result ---------------------------------------------------------------------------------
    def groups(self) -> tuple[PermGroup, ...]:
        self._join_shared_slots()
        for param, reason in self.untrusted_params.items():
            self.freeze([v for v, s in self.slots if s.param == param], reason)
        self._freeze_fixed_axis_slots()
        members: dict[int, list[int]] = defaultdict(list)
        for v in range(len(self._vars)):
            members[self.find(v)].append(v)
        slots = _collect(self.slots, self.find)
        sites = _collect(self.sites, self.find)
        producer_sites = _collect(self.producer_sites, self.find)
        out: list[PermGroup] = []
        for root in sorted(members):
            self.group_of[root] = len(out)
            vs = [self._vars[v] for v in members[root]]
            size = self._vars[root].size
            block = math.gcd(*(x.block for x in vs))
            frozen = [f for x in vs for f in x.frozen]
            frozen_reason, by_design = _freeze_reason(frozen)
            labels = [x.label for x in vs]
            label = labels[0] + (f" (+{len(labels) - 1})" if len(labels) > 1 else "")
            out.append(PermGroup(
                id=len(out), size=size, slots=tuple(dict.fromkeys(slots.get(root, []))),
                structure=Blocks(size // block, block), frozen=frozen_reason, by_design=by_design,
                pad_blockers=tuple(dict.fromkeys(r for x in vs for r in x.no_pad)),
                zip_blockers=tuple(dict.fromkeys(r for x in vs for r in x.no_zip)),
                sites=tuple(dict.fromkeys(sites.get(root) or producer_sites.get(root, []))),
                label=label, producers=tuple(labels), key=vs[0].key))
        return tuple(out)

    def ids(self, value: object) -> tuple[int, ...]:
        """The group ids a value carries (after ``groups()``)."""
        return tuple(sorted({self.group_of[self.find(v)] for v in vars_of(value)}))

    def _freeze_fixed_axis_slots(self) -> None:
        """A slot on an axis fixed by design (vocabulary, model-input features): permuting it breaks that use."""
        for v, s in self.slots:
            why = self.fixed_axes.get((s.param, s.dim))
            if why is not None:
                self.freeze([v], f"{s.param} dim {s.dim} is also {why}", by_design=True)

    def _join_shared_slots(self) -> None:
        """Slots of different variables on the same axis: identical ones join (tied weights), others freeze."""
        by_axis: dict[tuple[str, int], list[tuple[int, Slot]]] = defaultdict(list)
        for v, s in self.slots:
            by_axis[(s.param, s.dim)].append((v, s))
        for (param, dim), items in by_axis.items():
            for i, (v1, s1) in enumerate(items):
                for v2, s2 in items[i + 1:]:
                    if self.find(v1) == self.find(v2):
                        continue
                    lo1, hi1 = s1.span(self.size(v1))
                    lo2, hi2 = s2.span(self.size(v2))
                    if (lo1, hi1, s1.inner, s1.chunks) == (lo2, hi2, s2.inner, s2.chunks):
                        self.union(v1, v2, _Named(f"{param} (tied)"))
                        if s1.role is not s2.role:
                            self.block_zip([v1, v2], f"{param} is read and written along dim {dim} (tied weight)")
                    elif lo1 < hi2 and lo2 < hi1:
                        self.freeze([v1, v2], f"overlapping uses of {param} along dim {dim}")
        # a slot repeated with another role (tied weight) must be applied once
        seen: dict[tuple[int, str, int, int, int, int], bool] = {}
        kept = []
        for v, s in self.slots:
            key = (self.find(v), s.param, s.dim, s.offset, s.inner, s.chunks)
            if key not in seen:
                seen[key] = True
                kept.append((v, s))
        self.slots = kept


def _collect(pairs: Sequence[tuple[int, Any]], find: Callable[[int], int]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for v, item in pairs:
        out[find(v)].append(item)
    return out


def _freeze_reason(frozen: list[tuple[str, bool]]) -> tuple[str | None, bool]:
    if not frozen:
        return None, False
    real = [r for r, design in frozen if not design]
    if real:
        return real[0], False
    return frozen[0][0], True


def params_in(v: object) -> list[str]:
    """The parameters a value is (or holds, through tuples)."""
    if isinstance(v, Param):
        return [v.name]
    if isinstance(v, Items):
        return [p for item in v.items for p in params_in(item)]
    return []


def free_why(values: Sequence[object]) -> str:
    """The reason carried by a result computed only from values that depend on no group."""
    whys = [v.why for v in values if isinstance(v, Free)]
    return MODEL_INPUT if MODEL_INPUT in whys else (whys[0] if whys else "constant")
