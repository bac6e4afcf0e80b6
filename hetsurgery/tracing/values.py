"""What the lifter knows about each fx value: how the permutation groups sit in it.

A tensor value is one of

* ``Chan(dim, segs)``: axis ``dim`` carries groups. ``segs`` lists them in order along the axis;
  ``Seg(var, size, inner)`` is ``size`` channels of group variable ``var``, each ``inner`` wide.
  A plain feature map is one segment; a concat is several; a flattened conv map has ``inner = H*W``.
  After a channel shuffle segments interleave: ``Seg(..., stride=g)`` puts consecutive channels ``g``
  apart and ``Chan.at`` gives each segment's first index.
* ``Heads(block_dim, dim, var, count, size, repeat)``: one group split into ``count`` heads of ``size``
  channels, the head index along ``block_dim`` and the channel inside the head along ``dim``. With
  ``repeat > 1`` every head appears ``repeat`` times in a row along ``block_dim`` (grouped-query attention's
  ``repeat_kv``: index ``h`` is head ``h // repeat``).
* ``HeadSlice``: channels ``lo … hi - 1`` of every head of a ``Heads`` value (rotary embedding's
  ``rotate_half`` cuts each head in two and puts the halves back swapped).
* ``HeadIndex(dim, var, count)``: a tensor with no channel axis whose dim ``dim`` indexes the heads of
  ``var`` (attention weights ``softmax(q kᵀ)``): it ties those heads to the heads of the values it weights.
* ``Pieces(dim, parts)``: a channel axis cut into ``len(parts)`` pieces along ``dim`` (a fused ``qkv``
  reshaped to ``(B, N, 3, heads, head_dim)``); piece ``i`` is the tracked value ``parts[i]``.
* ``Param(name, shape)``: a parameter or buffer (or an elementwise function of one).
* ``Free(why, params)``: does not depend on the order of any group (the model input, sizes, constants), and
  was computed from ``params`` (constants such as a rotary embedding's ``inv_freq``: if such a value is ever used
  where channels would have to move through it, the rule that gives up distrusts those parameters).

Tuples are ``Items``; ``ShapeOf`` is the ``.shape`` of a tracked tensor (reading the width is noted).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hetsurgery.ir.slots import hull, layout_positions

MODEL_INPUT = "model input"


@dataclass(frozen=True)
class Seg:
    var: int
    size: int
    inner: int = 1
    stride: int = 1  # channel c starts at the segment's first index + c*stride*inner
    run: int = 0  # with ``skip``: runs of ``run`` channels, ``skip`` channels of others after each (``Slot.run``)
    skip: int = 0

    @property
    def width(self) -> int:
        """How many indices of the axis the segment holds."""
        return self.size * self.inner

    @property
    def layout(self) -> tuple[int, int, int, int, int]:
        """Everything but the variable: two segments with one layout hold channels the same way."""
        return self.size, self.inner, self.stride, self.run, self.skip

    @property
    def hull(self) -> int:
        """From the segment's first index to past its last (other segments may sit in between)."""
        return hull(self.size, self.inner, self.stride, self.run, self.skip)

    def positions(self, at: int) -> range | list[int]:
        return layout_positions(at, self.size, self.inner, self.stride, self.run, self.skip)


@dataclass(frozen=True)
class Chan:
    """Axis ``dim`` holds ``segs``: one after another, or, with ``at``, each from its own first index."""

    dim: int
    segs: tuple[Seg, ...]
    at: tuple[int, ...] | None = None

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segs)

    def offsets(self) -> list[tuple[Seg, int]]:
        """Each segment with its offset along ``dim``."""
        if self.at is not None:
            return list(zip(self.segs, self.at, strict=True))
        out, at = [], 0
        for s in self.segs:
            out.append((s, at))
            at += s.width
        return out

    @property
    def packed(self) -> bool:
        """Segments one after another, channels consecutive (no interleaving)."""
        return self.at is None

    def moved(self, dim: int) -> Chan:
        return Chan(dim, self.segs, self.at)

    @staticmethod
    def placed(dim: int, items: list[tuple[Seg, int]]) -> Chan:
        """A channel axis from segments at given offsets (which must tile it), packed when they are in order."""
        items = sorted(items, key=lambda item: item[1])
        at, packed = 0, True
        for seg, offset in items:
            packed = packed and seg.stride == 1 and offset == at
            at += seg.width
        segs = tuple(seg for seg, _ in items)
        return Chan(dim, segs) if packed else Chan(dim, segs, tuple(offset for _, offset in items))


@dataclass(frozen=True)
class Heads:
    block_dim: int
    dim: int
    var: int
    count: int
    size: int
    repeat: int = 1

    @property
    def extent(self) -> int:
        """How many indices ``block_dim`` has."""
        return self.count * self.repeat


@dataclass(frozen=True)
class HeadSlice:
    """Channels ``lo … hi - 1`` of each head of ``heads`` (along ``heads.dim``, which then has ``hi - lo``)."""

    heads: Heads
    lo: int
    hi: int


@dataclass(frozen=True)
class HeadIndex:
    """Dim ``dim`` indexes the ``count`` heads of ``var`` (no channel axis: attention weights)."""

    dim: int
    var: int
    count: int


@dataclass(frozen=True)
class Pieces:
    dim: int
    parts: tuple[Chan | Heads, ...]


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Free:
    why: str = "constant"
    params: tuple[str, ...] = ()  # parameters it was computed from (a rotary table from ``inv_freq``)


@dataclass(frozen=True)
class Items:
    items: tuple[Value, ...]


@dataclass(frozen=True)
class ShapeOf:
    of: Chan | Heads


Tracked = Chan | Heads
Value = Chan | Heads | HeadSlice | HeadIndex | Pieces | Param | Free | Items | ShapeOf


def vars_of(v: object) -> list[int]:
    """Every group variable a value carries (through tuples and shapes)."""
    if isinstance(v, Chan):
        return [s.var for s in v.segs]
    if isinstance(v, (Heads, HeadIndex)):
        return [v.var]
    if isinstance(v, HeadSlice):
        return [v.heads.var]
    if isinstance(v, Pieces):
        return [x for part in v.parts for x in vars_of(part)]
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
        return v.moved(v.dim + delta)
    return replace(v, block_dim=v.block_dim + delta, dim=v.dim + delta)


def remap(v: Tracked, mapping: dict[int, int]) -> Tracked | None:
    """Move the channel dims through ``mapping`` (old dim -> new dim); ``None`` when one disappears."""
    if any(d not in mapping for d in channel_dims(v)):
        return None
    if isinstance(v, Chan):
        return v.moved(mapping[v.dim])
    return replace(v, block_dim=mapping[v.block_dim], dim=mapping[v.dim])


def remap_pieces(v: Pieces, mapping: dict[int, int]) -> Pieces | None:
    """``remap`` for every piece and the pieces' axis."""
    parts = [remap(p, mapping) for p in v.parts]
    if v.dim not in mapping or any(p is None for p in parts):
        return None
    return Pieces(mapping[v.dim], tuple(p for p in parts if p is not None))
