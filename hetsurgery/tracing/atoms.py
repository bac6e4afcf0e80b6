"""Atoms: the pieces group variables are made of, joined by union-find and cut when a consumer splits them.

A fused ``qkv`` Linear makes one variable of ``3d`` channels; ``q, k, v = qkv.chunk(3, -1)`` then needs its
three thirds to be groups of their own. The variable stays one handle, but its single atom is *cut* into
three, and so is every atom joined with it (they are the same channels seen elsewhere). A group is a
union-find class of leaf atoms. Cuts are never undone, so refinement only ever goes one way.

>>> at = Atoms()
>>> a, b = at.new(6, "qkv", "qkv"), at.new(6, "out", "out")
>>> at.union(a, b)
>>> at.cut(a, 2)
>>> [at.atoms[x].size for x in at.leaves(a)], at.find(at.leaves(a)[0]) == at.find(at.leaves(b)[0])
([2, 4], True)
>>> at.atoms[at.leaves(a)[1]].key
'qkv[2:6]'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass
class Atom:
    size: int
    label: str
    key: str  # stable: the node that made it, "#i" for the i-th variable one node makes, "[lo:hi]" for a piece
    origin: tuple[int, int]  # (the atom it was cut from first, its first channel there): the order of groups
    block: int  # permutations may act only inside consecutive blocks of this many channels
    frozen: list[tuple[str, bool]] = field(default_factory=list)  # (reason, by design)
    no_pad: list[str] = field(default_factory=list)
    no_zip: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said in the group's label ("probed at node ...")
    heads: bool = False  # an attention read the blocks as heads: whole blocks may move (unless ``stuck``)
    stuck: list[str] = field(default_factory=list)  # why whole blocks may not move
    fixed_inner: list[str] = field(default_factory=list)  # why channels keep their order inside a block
    views: set[int] = field(default_factory=set)  # every block size the channels were read in (heads, groups)
    children: tuple[int, ...] = ()


class Atoms:
    """Union-find over atoms of equal size; cutting an atom cuts every atom of its class the same way."""

    def __init__(self) -> None:
        self.atoms: list[Atom] = []
        self._parent: list[int] = []
        self._members: dict[int, list[int]] = {}

    def new(self, size: int, label: str, key: str) -> int:
        a = len(self.atoms)
        self.atoms.append(Atom(size=size, label=label, key=key, origin=(a, 0), block=size))
        self._parent.append(a)
        self._members[a] = [a]
        return a

    def find(self, a: int) -> int:
        while self._parent[a] != a:
            self._parent[a] = self._parent[self._parent[a]]
            a = self._parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        assert self.atoms[ra].size == self.atoms[rb].size, "atoms of different sizes cannot be joined"
        keep, gone = min(ra, rb), max(ra, rb)
        self._parent[gone] = keep
        self._members[keep].extend(self._members.pop(gone))

    def members(self, a: int) -> list[int]:
        return list(self._members[self.find(a)])

    def leaves(self, a: int) -> list[int]:
        """The uncut atoms ``a`` consists of, in channel order."""
        kids = self.atoms[a].children
        return [a] if not kids else [leaf for k in kids for leaf in self.leaves(k)]

    def cut(self, a: int, k: int) -> None:
        """Cut leaf ``a`` (and every atom joined with it) after its first ``k`` channels."""
        first: list[int] = []
        second: list[int] = []
        for m in self.members(a):
            atom = self.atoms[m]
            root, start = atom.origin
            pieces = []
            for lo, hi in ((0, k), (k, atom.size)):
                base = self.atoms[root].key
                piece = replace(atom, size=hi - lo, origin=(root, start + lo), children=(),
                                key=f"{base}[{start + lo}:{start + hi}]",
                                label=f"{self.atoms[root].label}[{start + lo}:{start + hi}]",
                                block=local_block(atom.block, lo, hi),
                                frozen=list(atom.frozen), no_pad=list(atom.no_pad), no_zip=list(atom.no_zip),
                                notes=list(atom.notes), stuck=list(atom.stuck), fixed_inner=list(atom.fixed_inner),
                                views={local_block(b, lo, hi) for b in atom.views})
                pieces.append(len(self.atoms))
                self.atoms.append(piece)
                self._parent.append(pieces[-1])
                self._members[pieces[-1]] = [pieces[-1]]
            atom.children = tuple(pieces)
            first.append(pieces[0])
            second.append(pieces[1])
        for side in (first, second):
            for other in side[1:]:
                self.union(side[0], other)

    def classes(self) -> list[list[int]]:
        """Every class of leaf atoms, in the order of their first channel's origin."""
        roots = {self.find(a) for a in range(len(self.atoms)) if not self.atoms[a].children}
        return sorted((sorted(self._members[r], key=lambda m: self.atoms[m].origin) for r in roots),
                      key=lambda ms: self.atoms[ms[0]].origin)


def local_block(block: int, lo: int, hi: int) -> int:
    """The block size of channels ``lo … hi - 1`` of something permuted in blocks of ``block`` from channel 0:
    the largest that divides their count and puts a boundary wherever ``block`` does.

    >>> local_block(8, 2, 6), local_block(4, 2, 10), local_block(4, 0, 8)
    (4, 2, 4)
    """
    first = (lo // block + 1) * block  # the first boundary after lo
    return hi - lo if first >= hi else math.gcd(hi - lo, first - lo, block)
