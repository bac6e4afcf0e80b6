"""Where a permutation group's channels live: ``Slot``, ``Site`` and ``Blocks``.

A group of ``n`` channels is realised in many tensors. ``Slot("fc1.weight", dim=0)`` says that
channel ``c`` is row ``c`` of ``fc1.weight``. After a flatten of a ``(C, 4, 4)`` feature map the next
Linear sees channel ``c`` at columns ``16c … 16c+15``: ``Slot("fc.weight", dim=1, inner=16)``. After a
concat the second input's channels start at an ``offset``. After a channel shuffle (``view(N, g, C/g, H, W)``,
``transpose(1, 2)``, ``flatten``) the channels of one group sit ``stride`` channels apart.

>>> s = Slot("fc.weight", dim=1, offset=8, inner=2, role=Role.CONSUME)
>>> s.span(size=3)
(8, 14)
>>> shuffled = Slot("conv.weight", dim=1, offset=1, stride=2, role=Role.CONSUME)
>>> shuffled.span(size=3), list(shuffled.positions(size=3))
((1, 6), [1, 3, 5])
>>> repeated = Slot("q.weight", dim=0, offset=2, run=2, skip=2)   # query head 1 of 2 per key head
>>> list(repeated.positions(size=4))
[2, 3, 6, 7]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.Enum):
    """How a merge matrix acts on a slot: ``PRODUCE`` slots get ``M @ W``, ``CONSUME`` slots ``W @ U``."""

    PRODUCE = "produce"
    CONSUME = "consume"


@dataclass(frozen=True)
class Slot:
    """Channel ``c`` occupies ``start … start + inner - 1`` along ``dim`` of ``param``, where
    ``start = offset + c*stride*inner``: consecutive channels (``stride`` 1) unless interleaved with
    other groups (``stride`` > 1, after a channel shuffle).

    ``chunks > 1`` is the block-diagonal layout of a grouped convolution's input: the parameter is cut
    into ``chunks`` equal parts along dim 0 and part ``j`` holds, along ``dim``, the channels of block
    ``j`` only (local index ``c - j*size/chunks``).

    ``run > 0`` lays the channels out in runs of ``run`` with ``skip`` channel-widths of other entries after
    each run (grouped-query attention: a key head's channels in each of its query heads); ``stride`` is 1.
    """

    param: str
    dim: int
    offset: int = 0
    inner: int = 1
    role: Role = Role.PRODUCE
    chunks: int = 1
    stride: int = 1
    run: int = 0
    skip: int = 0

    @property
    def packed(self) -> bool:
        """Channels one after another (no other entries between them)."""
        return self.stride == 1 and not self.skip

    def span(self, size: int) -> tuple[int, int]:
        """The half-open index range from this slot's first index to its last along ``dim`` (a group of
        ``size`` channels); unless ``packed``, other groups' indices lie in it too."""
        return self.offset, self.offset + hull(size // self.chunks if self.chunks > 1 else size, self.inner,
                                               self.stride, self.run, self.skip)

    def extent(self, size: int) -> int:
        """How many indices along ``dim`` the slot holds."""
        return (size // self.chunks if self.chunks > 1 else size) * self.inner

    def positions(self, size: int) -> range | list[int]:
        """Every index along ``dim`` the slot holds, in channel order."""
        return layout_positions(self.offset, size // self.chunks if self.chunks > 1 else size, self.inner,
                                self.stride, self.run, self.skip)

    def sort_key(self) -> tuple[str, int, int, int, str, int, int, int, int]:
        return (self.param, self.dim, self.offset, self.inner, self.role.value, self.chunks, self.stride,
                self.run, self.skip)


def hull(size: int, inner: int, stride: int, run: int = 0, skip: int = 0) -> int:
    """The distance from the first index of ``size`` channels laid out ``stride`` apart (or in runs of ``run``
    with ``skip`` after each) to past their last."""
    if not size:
        return 0
    if skip:
        return ((size - 1) // run * (run + skip) + (size - 1) % run + 1) * inner
    return ((size - 1) * stride + 1) * inner


def channel_start(c: Any, stride: int, run: int, skip: int) -> Any:
    """The position of channel ``c`` (an int or an integer tensor) counted in channel widths from the first."""
    return c // run * (run + skip) + c % run if skip else c * stride


def layout_positions(offset: int, size: int, inner: int, stride: int, run: int = 0, skip: int = 0
                     ) -> range | list[int]:
    """The indices of ``size`` channels of ``inner`` entries each, channel ``c`` from
    ``offset + channel_start(c)*inner``."""
    if stride == 1 and not skip:
        return range(offset, offset + size * inner)
    return [offset + channel_start(c, stride, run, skip) * inner + j for c in range(size) for j in range(inner)]


def overlaps(a: Slot, size_a: int, b: Slot, size_b: int) -> bool:
    """Whether two slots on the same axis share an index (interleaved slots need not: their hulls may meet)."""
    lo1, hi1 = a.span(size_a)
    lo2, hi2 = b.span(size_b)
    if not (lo1 < hi2 and lo2 < hi1):
        return False
    if a.packed and b.packed:
        return True
    return not set(a.positions(size_a)).isdisjoint(b.positions(size_b))


@dataclass(frozen=True)
class Site:
    """A place in the traced graph where the group's features can be observed.

    The output of fx node ``node`` holds channel ``c`` at ``offset + c*stride*inner …`` (``inner`` entries)
    along ``dim``; every other axis (batch, spatial, sequence, the ``inner`` positions) counts as samples.
    """

    node: str
    dim: int
    offset: int = 0
    inner: int = 1
    stride: int = 1
    run: int = 0
    skip: int = 0

    @property
    def packed(self) -> bool:
        return self.stride == 1 and not self.skip

    def positions(self, size: int) -> range | list[int]:
        return layout_positions(self.offset, size, self.inner, self.stride, self.run, self.skip)


@dataclass(frozen=True)
class Blocks:
    """``count`` blocks of ``size`` channels; permutations act inside each block, and with ``moves`` whole
    blocks may also trade places (attention heads: a permutation of heads, shared by every group that
    ``PermGroup.heads_with`` ties together). ``inner=False``: the channels inside a block keep their order
    (rotary position embeddings rotate fixed pairs of them), only whole blocks move.

    A free group of ``n`` channels is ``Blocks(1, n)``; the heads of an attention layer are
    ``Blocks(heads, head_dim, moves=True)``; a grouped convolution with ``g`` groups gives ``Blocks(g, C/g)``.

    >>> str(Blocks(4, 16, moves=True)), str(Blocks(4, 16, moves=True, inner=False))
    ('4x16 heads', '4x16 whole heads')
    """

    count: int
    size: int
    moves: bool = False
    inner: bool = True

    @property
    def total(self) -> int:
        return self.count * self.size

    def order_of(self, perm: Any) -> Any:
        """Which block each block of a block-respecting permutation (an integer tensor) takes."""
        return perm.view(self.count, self.size)[:, 0] // self.size

    def __str__(self) -> str:
        if self.count == 1:
            return "free"
        kind = " heads" if self.inner else " whole heads"
        return f"{self.count}x{self.size}" + (kind if self.moves else "" if self.inner else " fixed")
