"""The lifter's state: group variables (runs of atoms joined by union-find), and what each variable is told.

Rules (``hetsurgery.tracing.rules``) call these methods while the walk visits the fx nodes in order;
``groups()`` then turns the classes of atoms into ``PermGroup``s.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import fx

from hetsurgery.ir import Blocks, PermGroup, Role, Site, Slot
from hetsurgery.ir.slots import overlaps
from hetsurgery.tracing.atoms import Atom, Atoms, local_block
from hetsurgery.tracing.values import MODEL_INPUT, Chan, Free, Items, Param, Value, vars_of

T = TypeVar("T", Slot, Site)


class _Named:
    """Stands in for an fx node in messages about joins that no single node causes."""

    def __init__(self, name: str) -> None:
        self.name = name


class Lifter:
    """Mutable state of one lift; lives only inside ``lift_graph``.

    A group variable is a handle on a run of atoms (``atoms.Atoms``): a consumer that splits a variable
    (``chunk``, ``split``, slicing) cuts its atoms and gets new variables for the pieces; slots and sites
    recorded on the whole variable are laid out over its pieces when the groups are built.
    """

    def __init__(self, gm: fx.GraphModule, name: str, probes: Mapping[fx.Node, Any] | None = None) -> None:
        self.gm = gm
        self.name = name
        self.probes = probes  # recorded inputs of the nodes the channel rules do not know; None: do not probe
        self.modules = dict(gm.named_modules())
        named = [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]
        self.tensors: dict[str, torch.Tensor] = dict(named)
        first: dict[int, str] = {}
        # tied tensors (one tensor under several names) are known by the first name
        self.canonical = {n: first.setdefault(id(t), n) for n, t in named}
        self.env: dict[fx.Node, Value] = {}
        self.atoms = Atoms()
        self._vars: list[tuple[int, ...]] = []  # variable -> the atoms it was made of (cut later: see leaves)
        self._sizes: list[int] = []
        self.slots: list[tuple[int, Slot]] = []
        self.sites: list[tuple[int, Site]] = []
        self.producer_sites: list[tuple[int, Site]] = []
        self.fixed_axes: dict[tuple[str, int], str] = {}  # axis -> what fixes it ("the vocabulary axis of ...")
        self.untrusted_params: dict[str, str] = {}
        self.constants: dict[str, str] = {}  # parameter -> how a group-free value was computed from it
        self.axis_notes: dict[tuple[str, int], str] = {}  # why an axis got no channels (for ``uncovered``)
        self.ties: list[tuple[int, int, str]] = []  # variables whose heads move together, the node that ties them
        self.repeats: list[tuple[int, int, int, int, str]] = []  # (query var, key var, repeat, head size, node)
        self._made: dict[str, int] = {}  # node name -> variables made there
        self.group_of: dict[int, int] = {}  # atom class root -> group id, once groups() ran

    # -- variables ------------------------------------------------------------------------------
    def new_var(self, size: int, node: fx.Node) -> int:
        made = self._made.get(node.name, 0)
        self._made[node.name] = made + 1
        atom = self.atoms.new(size, node.name, node.name + (f"#{made}" if made else ""))
        return self._var((atom,), size)

    def _var(self, atoms: tuple[int, ...], size: int) -> int:
        self._vars.append(atoms)
        self._sizes.append(size)
        return len(self._vars) - 1

    def leaves(self, v: int) -> list[tuple[int, int]]:
        """The uncut atoms of variable ``v`` with the channel of ``v`` each starts at."""
        out, at = [], 0
        for a in self._vars[v]:
            for leaf in self.atoms.leaves(a):
                out.append((leaf, at))
                at += self.atoms.atoms[leaf].size
        return out

    def cut(self, v: int, at: int) -> None:
        """Make channel ``at`` of ``v`` the first of an atom (cutting whatever atom it falls in)."""
        for leaf, start in self.leaves(v):
            n = self.atoms.atoms[leaf].size
            if start < at < start + n:
                self.atoms.cut(leaf, at - start)
                return

    def sub_var(self, v: int, lo: int, hi: int) -> int:
        """A variable for channels ``lo … hi - 1`` of ``v`` (``v`` itself when that is all of it)."""
        if (lo, hi) == (0, self.size(v)):
            return v
        self.cut(v, lo)
        self.cut(v, hi)
        return self._var(tuple(a for a, at in self.leaves(v) if lo <= at < hi), hi - lo)

    def union(self, a: int, b: int, node: fx.Node | _Named) -> None:
        """Join two variables channel by channel; their atoms are first cut alike."""
        if self.size(a) != self.size(b):
            why = f"channel counts {self.size(a)} and {self.size(b)} meet at node {node.name}"
            self.freeze([a, b], why)
            return
        while True:
            cuts_a = {at for _, at in self.leaves(a)}
            cuts_b = {at for _, at in self.leaves(b)}
            if cuts_a == cuts_b:
                break
            for at in cuts_a ^ cuts_b:
                self.cut(a, at)
                self.cut(b, at)
        for (x, _), (y, _) in zip(self.leaves(a), self.leaves(b), strict=True):
            self.atoms.union(x, y)

    def _each(self, vs: list[int]) -> list[Atom]:
        return [self.atoms.atoms[leaf] for v in vs for leaf, _ in self.leaves(v)]

    def freeze(self, vs: list[int], reason: str, by_design: bool = False) -> None:
        for atom in self._each(vs):
            atom.frozen.append((reason, by_design))

    def block_pad(self, vs: list[int], reason: str) -> None:
        for atom in self._each(vs):
            atom.no_pad.append(reason)

    def block_zip(self, vs: list[int], reason: str) -> None:
        for atom in self._each(vs):
            atom.no_zip.append(reason)

    def fix_width(self, vs: list[int], reason: str) -> None:
        self.block_pad(vs, reason)
        self.block_zip(vs, reason)

    def note(self, vs: list[int], text: str) -> None:
        """Say ``text`` in the label of the groups ``vs`` belong to."""
        for atom in self._each(vs):
            atom.notes.append(text)

    def constrain_blocks(self, v: int, block: int) -> None:
        """Permutations of ``v`` may only act inside its consecutive blocks of ``block`` channels. Whole blocks may
        trade places only when an attention reads them as heads (``attend``) and every view agrees on one block
        size (``Atom.views``)."""
        for leaf, start in self.leaves(v):
            atom = self.atoms.atoms[leaf]
            local = local_block(block, start, start + atom.size)
            atom.block = math.gcd(atom.block, local)
            atom.views.add(local)

    # -- attention heads --------------------------------------------------------------------------
    def attend(self, vs: list[int]) -> None:
        """An attention reads the blocks of ``vs`` as heads: whole heads may move (see ``tie_heads``)."""
        for atom in self._each(vs):
            atom.heads = True

    def stick(self, vs: list[int], reason: str) -> None:
        """Whole blocks of ``vs`` may not trade places (a per-head parameter, an op across the heads)."""
        for atom in self._each(vs):
            atom.stuck.append(reason)

    def fix_inner(self, vs: list[int], reason: str) -> None:
        """The channels inside each block of ``vs`` keep their order (only whole blocks may move)."""
        for atom in self._each(vs):
            atom.fixed_inner.append(reason)

    def tie_heads(self, a: int, b: int, node: fx.Node) -> None:
        """Head ``h`` of ``a`` and head ``h`` of ``b`` are one head of an attention: they move together."""
        self.ties.append((a, b, node.name))

    def repeat_heads(self, query: int, key: int, repeat: int, size: int, node: fx.Node) -> None:
        """Grouped-query attention: query head ``h`` meets key head ``h // repeat`` channel by channel, so the
        query projection holds the key group's channels once per query head (``Slot.run`` / ``skip``)."""
        self.repeats.append((query, key, repeat, size, node.name))

    def size(self, v: int) -> int:
        return self._sizes[v]

    # -- slots and sites ------------------------------------------------------------------------
    def slot(self, v: int, slot: Slot) -> None:
        self.slots.append((v, replace(slot, param=self.canonical.get(slot.param, slot.param))))

    def add_slots(self, value: Chan, param: str | None, dim: int, role: Role) -> None:
        """One slot per segment of ``value`` on axis ``dim`` of ``param`` (skipped when absent)."""
        if param is None or param not in self.tensors:
            return
        for seg, at in value.offsets():
            self.slot(seg.var, Slot(param, dim, at, seg.inner, role, stride=seg.stride, run=seg.run, skip=seg.skip))

    def consume(self, value: Chan, node: fx.Node, param: str, dim: int) -> None:
        """``param``'s axis ``dim`` reads ``value`` (the output of ``node``): consumer slots and sites."""
        self.add_slots(value, param, dim, Role.CONSUME)
        self.observe(value, node)

    def observe(self, value: Chan, node: fx.Node, producer: bool = False) -> None:
        target = self.producer_sites if producer else self.sites
        for seg, at in value.offsets():
            target.append((seg.var, Site(node.name, value.dim, at, seg.inner, seg.stride, seg.run, seg.skip)))

    def fix_axes(self, param: str | None, dims: range | list[int], why: str) -> None:
        """Axes ``dims`` of ``param`` are not channels by design; ``why`` completes "<param> dim <d> is ..."."""
        if param is not None:
            for d in dims:
                self.fixed_axes.setdefault((self.canonical.get(param, param), d), why)

    def constant(self, params: Sequence[str], node: fx.Node) -> None:
        """``params`` were combined into a value that depends on no group: unless some other use needs them, their
        axes are not channels (``constant_axes``)."""
        for p in params:
            self.constants.setdefault(self.canonical.get(p, p), f"computed at node {node.name}")

    def constant_axes(self) -> None:
        """Fix every axis of the parameters used only as constants (no slot, not distrusted): called after
        ``groups()``."""
        slotted = {s.param for _, s in self.slots}
        for p, how in self.constants.items():
            if p not in slotted and p not in self.untrusted_params:
                self.fix_axes(p, range(self.tensors[p].dim()), f"an axis of a constant ({how}), which no channel "
                                                                "passes through")

    def note_axis(self, param: str, dim: int, why: str) -> None:
        """Say why axis ``dim`` of ``param`` has no channels (its input carries none: the output of a give-up)."""
        self.axis_notes.setdefault((self.canonical.get(param, param), dim), why)

    def distrust(self, param: str, reason: str) -> None:
        """Any group with a slot on ``param`` will be frozen: the parameter is used in a way we do not follow."""
        self.untrusted_params.setdefault(self.canonical.get(param, param), reason)

    def give_up(self, values: Sequence[object], reason: str) -> Free:
        """Freeze everything ``values`` carry; the result depends on no free group.

        Without channels or the model input among ``values`` (parameters reshaped or combined with positions:
        a rotary table from ``inv_freq``) nothing is frozen: the parameters are constants so far, and the result
        carries them, so that a later use that needs their channels distrusts them then."""
        params = [p for v in values for p in params_in(v)]
        if not any(vars_of(v) for v in values) and not any(isinstance(v, Free) and v.why == MODEL_INPUT
                                                            for v in values):
            for p in params:
                self.constants.setdefault(self.canonical.get(p, p), reason)
            return Free(f"output of {reason}", tuple(dict.fromkeys(params)))
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
        from hetsurgery.tracing.heads import laid_over_keys, repeat_aliases, with_heads

        slots = self._laid_out(self.slots)
        slots = self._join_shared_slots(slots)
        by_param: dict[str, list[int]] = defaultdict(list)
        for a, s in slots:
            by_param[s.param].append(a)
        for param, how in self.constants.items():  # a weight also read as a plain value: its channels may not move
            if param in by_param:
                self.untrusted_params.setdefault(param, f"{param} is also read as a plain value ({how})")
        for param, reason in self.untrusted_params.items():
            for a in by_param.get(param, ()):
                self.atoms.atoms[a].frozen.append((reason, False))
        self._freeze_fixed_axis_slots(slots)
        aliases = repeat_aliases(self)
        by_class = _collect(laid_over_keys(slots, aliases, self.atoms.find), self.atoms.find)
        sites = _collect(laid_over_keys(self._laid_out(self.sites), aliases, self.atoms.find), self.atoms.find)
        producer_sites = _collect(laid_over_keys(self._laid_out(self.producer_sites), aliases, self.atoms.find),
                                  self.atoms.find)
        absorbed: dict[int, list[int]] = defaultdict(list)  # key group root -> atoms of its query groups
        for q_root, (k_root, _, _) in aliases.items():
            absorbed[k_root].extend(self.atoms.members(q_root))
        out: list[PermGroup] = []
        for members in self.atoms.classes():
            root = self.atoms.find(members[0])
            if root in aliases:
                continue
            self.group_of[root] = len(out)
            xs = [self.atoms.atoms[m] for m in [*members, *absorbed.get(root, [])]]
            size = xs[0].size
            block = math.gcd(*(x.block for x in xs if x.size == size))
            frozen_reason, by_design = _freeze_reason([f for x in xs for f in x.frozen])
            labels = list(dict.fromkeys(x.label for x in xs))
            label = labels[0] + (f" (+{len(xs) - 1})" if len(xs) > 1 else "")
            notes = list(dict.fromkeys(n for x in xs for n in x.notes))
            if notes:
                label += " [" + "; ".join(notes) + "]"
            out.append(PermGroup(
                id=len(out), size=size, slots=tuple(dict.fromkeys(by_class.get(root, []))),
                structure=Blocks(size // block, block), frozen=frozen_reason, by_design=by_design,
                pad_blockers=tuple(dict.fromkeys(r for x in xs for r in x.no_pad)),
                zip_blockers=tuple(dict.fromkeys(r for x in xs for r in x.no_zip)),
                sites=tuple(dict.fromkeys(sites.get(root) or producer_sites.get(root, []))),
                label=label, producers=tuple(labels), key=xs[0].key))
        for q_root, (k_root, _, _) in aliases.items():
            self.group_of[q_root] = self.group_of[k_root]
        return with_heads(self, out, absorbed)

    def ids(self, value: object) -> tuple[int, ...]:
        """The group ids a value carries (after ``groups()``)."""
        return tuple(sorted({g for v in vars_of(value) for g in self.var_ids(v)}))

    def var_ids(self, v: int) -> list[int]:
        return sorted({self.group_of[self.atoms.find(leaf)] for leaf, _ in self.leaves(v)})

    def _laid_out(self, items: Sequence[tuple[int, T]]) -> list[tuple[int, T]]:
        """Slots or sites of variables as slots or sites of their atoms (a cut variable's pieces sit at their
        channels' positions). A block-diagonal slot cannot be cut: its variable's atoms freeze."""
        out: list[tuple[int, T]] = []
        for v, item in items:
            leaves = self.leaves(v)
            if len(leaves) == 1:
                out.append((leaves[0][0], item))
                continue
            if isinstance(item, Slot) and item.chunks > 1:
                self.freeze([v], f"a grouped convolution ({item.param}) reads channels that a split cuts apart")
                continue
            if item.skip:
                self.freeze([v], "grouped-query attention heads that a split cuts apart")
                continue
            step = item.stride * item.inner
            for leaf, start in leaves:
                out.append((leaf, replace(item, offset=item.offset + start * step)))
        return out

    def _freeze_fixed_axis_slots(self, slots: list[tuple[int, Slot]]) -> None:
        """A slot on an axis fixed by design (vocabulary, model-input features): permuting it breaks that use."""
        for a, s in slots:
            why = self.fixed_axes.get((s.param, s.dim))
            if why is not None:
                self.atoms.atoms[a].frozen.append((f"{s.param} dim {s.dim} is also {why}", True))

    def _join_shared_slots(self, slots: list[tuple[int, Slot]]) -> list[tuple[int, Slot]]:
        """Slots of different atoms on the same axis: identical ones join (tied weights), others freeze."""
        by_axis: dict[tuple[str, int], list[tuple[int, Slot]]] = defaultdict(list)
        for a, s in slots:
            by_axis[(s.param, s.dim)].append((a, s))
        size = {a: self.atoms.atoms[a].size for a, _ in slots}
        for (param, dim), items in by_axis.items():
            for i, (a1, s1) in enumerate(items):
                for a2, s2 in items[i + 1:]:
                    if self.atoms.find(a1) == self.atoms.find(a2):
                        continue
                    same = (s1.span(size[a1]), s1.inner, s1.chunks, s1.stride) == \
                        (s2.span(size[a2]), s2.inner, s2.chunks, s2.stride)
                    if same:
                        self.atoms.union(a1, a2)
                        if s1.role is not s2.role:
                            for a in (a1, a2):
                                self.atoms.atoms[a].no_zip.append(
                                    f"{param} is read and written along dim {dim} (tied weight)")
                    elif overlaps(s1, size[a1], s2, size[a2]):
                        for a in (a1, a2):
                            self.atoms.atoms[a].frozen.append((f"overlapping uses of {param} along dim {dim}", False))
        # a slot repeated with another role (tied weight) must be applied once
        seen: set[tuple[int, str, int, int, int, int, int]] = set()
        kept = []
        for a, s in slots:
            key = (self.atoms.find(a), s.param, s.dim, s.offset, s.inner, s.chunks, s.stride)
            if key not in seen:
                seen.add(key)
                kept.append((a, s))
        return kept


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
    """The parameters a value is (or holds, through tuples, or was computed from)."""
    if isinstance(v, Param):
        return [v.name]
    if isinstance(v, Free):
        return list(v.params)
    if isinstance(v, Items):
        return [p for item in v.items for p in params_in(item)]
    return []


def free_of(values: Sequence[object]) -> Free:
    """A result computed only from values that depend on no group: their reason, and the parameters they were
    computed from."""
    params = tuple(dict.fromkeys(p for v in values for p in params_in(v)))
    return Free(free_why(values), params)


def free_why(values: Sequence[object]) -> str:
    """The reason carried by a result computed only from values that depend on no group."""
    whys = [v.why for v in values if isinstance(v, Free)]
    return MODEL_INPUT if MODEL_INPUT in whys else (whys[0] if whys else "constant")
