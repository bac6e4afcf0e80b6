"""What the lifter learns about each fx node besides its groups: ``NodeFacts``, ``Activation``, ``Range``.

The structural passes need to know where a layer computing the identity may be inserted: after a ReLU
the features are non-negative, so ``ReLU(I·x) = x``. The lifter therefore records, per node, the range
its output can take (an interval, from the ops' ranges: ReLU gives ``[0, ∞)``, sigmoid ``[0, 1]``, a sum
of non-negative values stays non-negative, a Linear gives anything) and which activation the node is.

>>> r = Range(0.0, 6.0)
>>> Activation.RELU.identity_on(r), Activation.RELU6.identity_on(r), Activation.GELU.identity_on(r)
(True, True, False)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from hetsurgery.ir.opkind import OpKind

INF = math.inf


@dataclass(frozen=True)
class Range:
    """The closed interval ``[lo, hi]`` every element of a node's output lies in (``±inf``: unbounded)."""

    lo: float = -INF
    hi: float = INF

    @property
    def nonneg(self) -> bool:
        return self.lo >= 0

    def hull(self, other: Range) -> Range:
        return Range(min(self.lo, other.lo), max(self.hi, other.hi))

    def clip(self, lo: float, hi: float) -> Range:
        """The range after clamping to ``[lo, hi]``."""
        return Range(min(max(self.lo, lo), hi), max(min(self.hi, hi), lo))

    def __str__(self) -> str:
        return f"[{self.lo:g}, {self.hi:g}]"


ANY = Range()


class Activation(enum.Enum):
    """The channel-wise functions the lifter tells apart (``OpKind.ELEMENTWISE`` nodes)."""

    IDENTITY = "identity"  # dropout (eval), nn.Identity, casts, contiguous, clone
    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    ELU = "elu"
    GELU = "gelu"
    SILU = "silu"
    MISH = "mish"
    SIGMOID = "sigmoid"
    HARDSIGMOID = "hardsigmoid"
    TANH = "tanh"
    HARDTANH = "hardtanh"
    HARDSWISH = "hardswish"
    NEG = "neg"

    def identity_on(self, r: Range) -> bool:
        """Whether the function is the identity on every value of ``r`` (``HARDTANH`` is the default ``[-1, 1]``
        clamp: the lifter gives other bounds no activation)."""
        return _IDENTITY_ON[self](r)

    def image(self, r: Range) -> Range:
        """The range of the function's output on inputs in ``r`` (an enclosure, never too small)."""
        return _IMAGE[self](r)

    @property
    def zero_at_zero(self) -> bool:
        """``f(0) == 0``: a branch ending in this function is zero when its input is."""
        return self not in (Activation.SIGMOID, Activation.HARDSIGMOID)


_IDENTITY_ON = {
    Activation.IDENTITY: lambda r: True,
    Activation.RELU: lambda r: r.lo >= 0,
    Activation.RELU6: lambda r: r.lo >= 0 and r.hi <= 6,
    Activation.LEAKY_RELU: lambda r: r.lo >= 0,
    Activation.ELU: lambda r: r.lo >= 0,
    Activation.HARDTANH: lambda r: r.lo >= -1 and r.hi <= 1,
    **{a: (lambda r: False) for a in (Activation.GELU, Activation.SILU, Activation.MISH, Activation.SIGMOID,
                                       Activation.HARDSIGMOID, Activation.TANH, Activation.HARDSWISH,
                                       Activation.NEG)},
}

_IMAGE = {
    Activation.IDENTITY: lambda r: r,
    Activation.RELU: lambda r: r.clip(0, INF),
    Activation.RELU6: lambda r: r.clip(0, 6),
    Activation.LEAKY_RELU: lambda r: r if r.lo >= 0 else Range(-INF, max(r.hi, 0)),
    Activation.ELU: lambda r: r if r.lo >= 0 else Range(-INF, max(r.hi, 0)),
    Activation.GELU: lambda r: Range(-0.18, max(r.hi, 0)),
    Activation.SILU: lambda r: Range(-0.28, max(r.hi, 0)),
    Activation.MISH: lambda r: Range(-0.31, max(r.hi, 0)),
    Activation.SIGMOID: lambda r: Range(0, 1),
    Activation.HARDSIGMOID: lambda r: Range(0, 1),
    Activation.TANH: lambda r: Range(-1, 1),
    Activation.HARDTANH: lambda r: r.clip(-1, 1),
    Activation.HARDSWISH: lambda r: Range(-0.375, max(r.hi, 0)),
    Activation.NEG: lambda r: Range(-r.hi, -r.lo),
}


@dataclass(frozen=True)
class NodeFacts:
    """One fx node as the lifter saw it.

    ``shape`` is the output's shape (``None`` for non-tensors), ``channel_dim`` the dim that carries
    groups (``None`` when none does), ``reads`` / ``writes`` the group ids of its inputs / its output,
    ``range`` the interval its output lies in, ``activation`` the function an elementwise node is.
    """

    kind: OpKind
    shape: tuple[int, ...] | None = None
    channel_dim: int | None = None
    reads: tuple[int, ...] = ()
    writes: tuple[int, ...] = ()
    range: Range = ANY
    activation: Activation | None = None

    @property
    def nonneg(self) -> bool:
        return self.range.nonneg
