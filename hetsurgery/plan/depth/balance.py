"""Balancing a stage pair after depth alignment: what to do so that both models have the same units.

A map ``f`` (``dp``) cuts the deeper stage into segments ``S_i = (f[i-1], f[i]]``: shallow unit ``i``
stands for those deep units. There are two ways to even the counts.

**add**: insert identity units into the shallower model (``InsertIdentity`` after a non-negative output,
``InsertZeroResidual`` for residual blocks) until it has ``n`` units. ``positions`` says where shallow
unit ``i`` lands, ``insertions`` how many units go right after which shallow unit:

- ``cla`` lands unit ``i`` at ``f[i]``. CLAFusion §3.2: if ``a(l+1) - a(l) > 1`` it adds layers "between
  layers l and l+1 of model B" whose weights are the identity, so they carry unit ``l``'s output, and
  unit ``l+1`` meets ``a(l+1)``. For ``m = 1`` (first prioritised) unit 0 lands at 0, ``n - 1`` follow.
- ``sma`` and ``lma`` land unit ``i`` at the *first* unit of its segment, ``f[i-1] + 1``, followed by
  ``|S_i| - 1`` identities. Xu et al. extend ``L^B`` to ``S^B = {L_1^B = L^B, L_2^B = I, …, L_l^B = I}``
  and merge ``S^A`` and ``S^B`` "one by one" (Eq. 5-6; zero residual blocks after it in the
  supplement, Eq. 1-2). The padded shallow model then outputs ``f_i^B`` at every position of ``S_i``:
  what LMA's objective (Eq. 4) compares with each ``f_ij^A``, and, at the segment's end, what SMA
  compares.

Either way the first unit of a stage stays first: no identity is ever inserted in front of it
(CLAFusion, App. C.1: a new first layer breaks when its input can be negative).

**merge**: fuse the deep units of every segment of two or more units into one unit
``W_{f[i]} D … D W_{f[i-1]+1}`` whose output is deep unit ``f[i]``'s (``FuseReluSegment``): CLAFusion
merges "layer a(l)+1 into layer a(l) of model A by directly connecting layer a(l) to layer a(l+1)",
``W^(a(l+1), a(l)) = W^(a(l+1), a(l)+1) D W^(a(l)+1, a(l))``, so the units between two matches fold
into the later one, which is exactly the segment. The same for all three methods; for CLA with
``m = 1`` the whole deep stage becomes one unit (its units after the first have no other counterpart).

>>> f = (0, 2, 4)                       # 3 shallow units, 5 deep ones
>>> positions(DepthMethod.CLA, f, 5), positions(DepthMethod.LMA, f, 5)
((0, 2, 4), (0, 1, 3))
>>> insertions(DepthMethod.CLA, f, 5)
(Insertion(after=0, count=1), Insertion(after=1, count=1))
>>> fusions(DepthMethod.SMA, f, 5)
(Fusion(shallow=1, deep=(1, 2)), Fusion(shallow=2, deep=(3, 4)))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from hetsurgery.plan.depth.dp import DepthMethod, check_map, segments


class Balance(Enum):
    ADD = "add"
    MERGE = "merge"


@dataclass(frozen=True)
class Insertion:
    """``count`` identity (or zero-residual) units right after shallow unit ``after``."""

    after: int
    count: int


@dataclass(frozen=True)
class Fusion:
    """The consecutive deep units ``deep`` become one unit, the counterpart of shallow unit ``shallow``."""

    shallow: int
    deep: tuple[int, ...]


def positions(method: DepthMethod, f: Sequence[int], n: int) -> tuple[int, ...]:
    """Where each shallow unit lands in its stage once ``add`` has given it ``n`` units."""
    check_map(method, f, len(f), n)
    if method is DepthMethod.CLA:
        return tuple(f)
    return tuple(seg[0] for seg in segments(f, n))


def insertions(method: DepthMethod, f: Sequence[int], n: int) -> tuple[Insertion, ...]:
    """The units ``add`` inserts, after which shallow unit and how many (only non-empty gaps)."""
    p = positions(method, f, n)
    gaps = [b - a - 1 for a, b in zip(p, [*p[1:], n], strict=True)]
    return tuple(Insertion(i, c) for i, c in enumerate(gaps) if c > 0)


def fusions(method: DepthMethod, f: Sequence[int], n: int) -> tuple[Fusion, ...]:
    """The runs of deep units ``merge`` fuses (the segments of two or more units)."""
    check_map(method, f, len(f), n)
    return tuple(Fusion(i, seg) for i, seg in enumerate(segments(f, n)) if len(seg) > 1)
