"""What the lifter knows about each fx value: how the permutation groups sit in it.

A tensor value is one of

* ``Chan(dim, segs)``: axis ``dim`` carries groups. ``segs`` lists them in order along the axis;
  ``Seg(var, size, inner)`` is ``size`` channels of group variable ``var``, each ``inner`` wide.
  A plain feature map is one segment; a concat is several; a flattened conv map has ``inner = H*W``.
* ``Heads(block_dim, dim, var, count, size)``: one group split into ``count`` heads of ``size`` channels,
  the head index along ``block_dim`` and the channel inside the head along ``dim``.
* ``Param(name, shape)``: a parameter or buffer (or an elementwise function of one).
* ``Free(why)``: does not depend on the order of any group (the model input, sizes, constants).

Tuples are ``Items``; ``ShapeOf`` is the ``.shape`` of a tracked tensor (reading the width is noted).
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_INPUT = "model input"


@dataclass(frozen=True)
class Seg:
    var: int
    size: int
    inner: int = 1

    @property
    def width(self) -> int:
        return self.size * self.inner


@dataclass(frozen=True)
class Chan:
    dim: int
    segs: tuple[Seg, ...]

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segs)

    def offsets(self) -> list[tuple[Seg, int]]:
        """Each segment with its offset along ``dim``."""
        out, at = [], 0
        for s in self.segs:
            out.append((s, at))
            at += s.width
        return out

    def moved(self, dim: int) -> Chan:
        return Chan(dim, self.segs)


@dataclass(frozen=True)
class Heads:
    block_dim: int
    dim: int
    var: int
    count: int
    size: int


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Free:
    why: str = "constant"


@dataclass(frozen=True)
class Items:
    items: tuple[Value, ...]


@dataclass(frozen=True)
class ShapeOf:
    of: Chan | Heads


Tracked = Chan | Heads
Value = Chan | Heads | Param | Free | Items | ShapeOf


def vars_of(v: object) -> list[int]:
    """Every group variable a value carries (through tuples and shapes)."""
    if isinstance(v, Chan):
        return [s.var for s in v.segs]
    if isinstance(v, Heads):
        return [v.var]
    if isinstance(v, Items):
        return [x for item in v.items for x in vars_of(item)]
    if isinstance(v, ShapeOf):
        return vars_of(v.of)
    return []


def channel_dims(v: Tracked) -> tuple[int, ...]:
    return (v.dim,) if isinstance(v, Chan) else (v.block_dim, v.dim)


def shift(v: Tracked, delta: int) -> Tracked:
    """The same value with its channel dims moved by ``delta`` (leading dims added or removed)."""
    if isinstance(v, Chan):
        return Chan(v.dim + delta, v.segs)
    return Heads(v.block_dim + delta, v.dim + delta, v.var, v.count, v.size)


def remap(v: Tracked, mapping: dict[int, int]) -> Tracked | None:
    """Move the channel dims through ``mapping`` (old dim -> new dim); ``None`` when one disappears."""
    if any(d not in mapping for d in channel_dims(v)):
        return None
    if isinstance(v, Chan):
        return Chan(mapping[v.dim], v.segs)
    return Heads(mapping[v.block_dim], mapping[v.dim], v.var, v.count, v.size)
