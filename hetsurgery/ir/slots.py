"""Where a permutation group's channels live: ``Slot``, ``Site`` and ``Blocks``.

A group of ``n`` channels is realised in many tensors. ``Slot("fc1.weight", dim=0)`` says that
channel ``c`` is row ``c`` of ``fc1.weight``. After a flatten of a ``(C, 4, 4)`` feature map the next
Linear sees channel ``c`` at columns ``16c … 16c+15``: ``Slot("fc.weight", dim=1, inner=16)``. After a
concat the second input's channels start at an ``offset``.

>>> s = Slot("fc.weight", dim=1, offset=8, inner=2, role=Role.CONSUME)
>>> s.span(size=3)
(8, 14)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """How a merge matrix acts on a slot: ``PRODUCE`` slots get ``M @ W``, ``CONSUME`` slots ``W @ U``."""

    PRODUCE = "produce"
    CONSUME = "consume"


@dataclass(frozen=True)
class Slot:
    """Channel ``c`` occupies ``offset + c*inner … offset + (c+1)*inner - 1`` along ``dim`` of ``param``.

    ``chunks > 1`` is the block-diagonal layout of a grouped convolution's input: the parameter is cut
    into ``chunks`` equal parts along dim 0 and part ``j`` holds, along ``dim``, the channels of block
    ``j`` only (local index ``c - j*size/chunks``).
    """

    param: str
    dim: int
    offset: int = 0
    inner: int = 1
    role: Role = Role.PRODUCE
    chunks: int = 1

    def span(self, size: int) -> tuple[int, int]:
        """The half-open index range this slot covers along ``dim`` for a group of ``size`` channels."""
        width = size // self.chunks if self.chunks > 1 else size
        return self.offset, self.offset + width * self.inner

    def sort_key(self) -> tuple[str, int, int, int, str, int]:
        return (self.param, self.dim, self.offset, self.inner, self.role.value, self.chunks)


@dataclass(frozen=True)
class Site:
    """A place in the traced graph where the group's features can be observed.

    The output of fx node ``node`` holds channel ``c`` at ``offset + c*inner …`` along ``dim``; every
    other axis (batch, spatial, sequence, the ``inner`` positions) counts as samples.
    """

    node: str
    dim: int
    offset: int = 0
    inner: int = 1


@dataclass(frozen=True)
class Blocks:
    """``count`` blocks of ``size`` channels; permutations may only act inside each block.

    A free group of ``n`` channels is ``Blocks(1, n)``; the heads of an attention layer are
    ``Blocks(heads, head_dim)``; a grouped convolution with ``g`` groups gives ``Blocks(g, C/g)``.
    """

    count: int
    size: int

    @property
    def total(self) -> int:
        return self.count * self.size

    def __str__(self) -> str:
        return "free" if self.count == 1 else f"{self.count}x{self.size}"
