"""Attention heads in the lifted groups: grouped-query layouts, head ties, and which groups move whole heads.

The rules tell the ``Lifter`` what they see: an attention reads blocks as heads (``attend``), ties the heads of
its q/k group to those of its v/o group (``tie_heads``), lays a query group over the key group it repeats
(``repeat_heads``), fixes the order inside heads (``fix_inner``: rotary embeddings) or keeps them in place
(``stick``). Once the classes of atoms are known, ``groups()`` asks this module to

* lay every query group over its key group (``repeat_aliases``, ``laid_over_keys``): the query projection holds
  the key group's channels once per query head, in runs of ``head_dim`` (``Slot.run``/``skip``);
* decide, per class of tied groups, whether whole heads may move (``with_heads``): every group of the class is
  read as heads by an attention, in one block size only, with as many heads as the others, nothing keeps them in
  place, no group of the class is frozen, and each tie joins whole groups (a tie from a variable that a cut split
  over several groups keeps all of them in place). A group whose heads cannot move and whose channels keep their
  order inside heads has nothing left to permute: it is frozen, by design when it is a single head.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from hetsurgery.ir import Blocks, PermGroup, Site, Slot

if TYPE_CHECKING:
    from hetsurgery.tracing.atoms import Atom
    from hetsurgery.tracing.lifter import Lifter

T = TypeVar("T", Slot, Site)
Aliases = Mapping[int, tuple[int, int, int]]  # query class root -> (key class root, repeat, head size)


def repeat_aliases(lx: Lifter) -> dict[int, tuple[int, int, int]]:
    """Grouped-query attention: per query group (class root), the key group it repeats, how many query heads
    each key head serves, and the head size. A query group that cannot be laid out over its key group (cut apart,
    met by two different key groups) freezes both."""
    out: dict[int, tuple[int, int, int]] = {}
    atoms = lx.atoms
    for q, k, rep, size, node in lx.repeats:
        lq, lk = lx.leaves(q), lx.leaves(k)
        roots = (atoms.find(lq[0][0]), atoms.find(lk[0][0])) if len(lq) == len(lk) == 1 else None
        if roots is None or roots[0] == roots[1] or out.get(roots[0], (roots[1],))[0] != roots[1] \
                or roots[1] in out or atoms.atoms[roots[0]].size != rep * atoms.atoms[roots[1]].size:
            lx.freeze([q, k], f"grouped-query attention at node {node} whose query and key heads the rules cannot "
                              "lay over each other")
            continue
        out[roots[0]] = (roots[1], rep, size)
    return out


def laid_over_keys(items: Sequence[tuple[int, T]], aliases: Aliases, find: Callable[[int], int]
                   ) -> list[tuple[int, T]]:
    """Slots or sites of query groups laid over their key groups: each once per query head of a key head."""
    out: list[tuple[int, T]] = []
    for a, item in items:
        alias = aliases.get(find(a))
        if alias is None:
            out.append((a, item))
            continue
        k_root, rep, run = alias
        for r in range(rep):
            out.append((k_root, replace(item, offset=item.offset + r * run * item.inner, run=run,
                                        skip=(rep - 1) * run)))
    return out


def with_heads(lx: Lifter, groups: list[PermGroup], absorbed: Mapping[int, list[int]]) -> tuple[PermGroup, ...]:
    """The groups with their head structure: which move whole blocks, tied with which others, which keep the order
    inside their blocks (frozen when nothing is left to permute)."""
    from networkx.utils import UnionFind

    atoms_of: dict[int, list[Atom]] = defaultdict(list)
    for members in lx.atoms.classes():
        root = lx.atoms.find(members[0])
        atoms_of[lx.group_of[root]].extend(lx.atoms.atoms[m] for m in [*members, *absorbed.get(root, [])])
    ties = UnionFind(range(len(groups)))
    held: dict[int, str] = {}  # group -> why its heads stay where they are, beyond its atoms' own reasons
    for a, b, node in lx.ties:
        ga, gb = lx.var_ids(a), lx.var_ids(b)
        if len(ga) == len(gb) == 1:
            ties.union(ga[0], gb[0])
        else:  # a cut split one side over several groups: the heads cannot move as one
            held.update(dict.fromkeys([*ga, *gb], f"the heads tied at node {node} are split over several groups"))
    out = list(groups)
    for members in ties.to_sets():
        members = sorted(members)
        why_not = [_why_held(groups[g], atoms_of[g], held.get(g)) for g in members]
        why_not += [f"the heads it moves with (group {g}) are frozen: {groups[g].frozen}" for g in members
                    if groups[g].frozen is not None]
        reasons = [r for r in why_not if r]
        counts = {groups[g].structure.count for g in members}
        heads = all(any(x.heads for x in atoms_of[g]) for g in members)
        moves = heads and not reasons and len(counts) == 1 and counts != {1}
        for g in members:
            out[g] = _structured(groups[g], atoms_of[g], members, moves, heads, reasons)
    return tuple(out)


def _why_held(grp: PermGroup, xs: Sequence[Atom], held: str | None) -> str:
    """Why the heads of ``grp`` must stay where they are ("" when nothing holds them)."""
    if held:
        return held
    stuck = next((r for x in xs for r in x.stuck), "")
    if stuck:
        return stuck
    other = sorted({v for x in xs for v in x.views} - {grp.structure.size, grp.size})
    return f"its channels are also read in blocks of {other[0]}, not only as heads of {grp.structure.size}" \
        if other else ""


def _structured(grp: PermGroup, xs: Sequence[Atom], members: list[int], moves: bool, heads: bool,
                reasons: list[str]) -> PermGroup:
    inner = [r for x in xs for r in x.fixed_inner]
    structure = Blocks(grp.structure.count, grp.structure.size, moves=moves, inner=not inner)
    frozen, by_design = grp.frozen, grp.by_design
    if inner and not moves and frozen is None and grp.structure.count == 1 and heads:
        frozen, by_design = f"{inner[0]}, and one head has nowhere to move", True
    elif inner and not moves and frozen is None:
        why = reasons[0] if reasons else "its heads are not read by an attention"
        frozen, by_design = f"{inner[0]}, and whole heads cannot move ({why})", False
    tied = tuple(m for m in members if m != grp.id) if moves else ()
    return replace(grp, structure=structure, frozen=frozen, by_design=by_design, heads_with=tied)
