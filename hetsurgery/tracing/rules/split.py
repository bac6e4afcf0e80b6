"""Rules for ops that cut a tensor into pieces: chunk, split, tensor_split, unbind, narrow, and slicing.

Cutting along a dim without channels gives every piece the input's channels. Cutting along the channel dim
gives each piece the channels it holds: the variables that straddle a cut are cut too (``Lifter.sub_var``),
so a fused ``qkv`` Linear's ``3d`` outputs become three groups, each at its offset in the weight.

>>> import torch, hetsurgery as hs
>>> class QKV(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.qkv, self.a, self.b = torch.nn.Linear(4, 12), torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
...     def forward(self, x):
...         q, k, v = self.qkv(x).chunk(3, dim=-1)
...         return self.a(q * k) + self.b(v)
>>> g = hs.trace(QKV(), torch.randn(2, 4))
>>> [(grp.label, [s.offset for s in grp.slots if s.param == "qkv.weight"]) for grp in g.groups[:2]]
[('qkv[0:4] (+1)', [0, 4]), ('qkv[8:12]', [8])]
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import arg, norm_dim, rank, value
from hetsurgery.tracing.values import (
    Chan,
    Free,
    Heads,
    HeadSlice,
    Items,
    Param,
    Pieces,
    Seg,
    Value,
    remap,
    remap_pieces,
)

_NARROW = frozenset({torch.narrow, "narrow"})
_UNBIND = frozenset({torch.unbind, "unbind"})


def split(lx: Lifter, node: fx.Node) -> Value:
    """chunk / split / tensor_split / unbind (a tuple of pieces) and narrow (one piece)."""
    src = node.args[0]
    x = value(lx, src)
    r = rank(src)
    narrow = node.target in _NARROW
    d = norm_dim(arg(node, 1, "dim", 0) if narrow or node.target in _UNBIND else arg(node, 2, "dim", 0), r)
    cuts = _cuts(node, d, r)
    if cuts is None:
        return lx.give_up([x], f"a split whose pieces are unknown at node {node.name}")
    drop = node.target in _UNBIND
    pieces = [take(lx, node, x, d, lo, hi, r if drop else None) for lo, hi in cuts]
    return pieces[0] if narrow else Items(tuple(pieces))


def _cuts(node: fx.Node, d: int, r: int) -> list[tuple[int, int]] | None:
    """Each piece's index range along dim ``d``, read from the recorded output shapes."""
    if node.target in _NARROW:
        start, length = arg(node, 2, "start"), arg(node, 3, "length")
        if not isinstance(start, int) or not isinstance(length, int):
            return None
        return [(start, start + length)]
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, (tuple, list)) or not all(hasattr(m, "shape") for m in meta):
        return None
    cuts, at = [], 0
    for m in meta:
        extent = 1 if node.target in _UNBIND else m.shape[d]
        cuts.append((at, at + extent))
        at += extent
    return cuts


def take(lx: Lifter, node: fx.Node, x: Any, d: int, lo: int, hi: int, drop: int | None = None) -> Value:
    """The piece of ``x`` at indices ``lo … hi - 1`` of dim ``d``; with ``drop`` (the rank of ``x``) the single
    index ``lo`` is taken and dim ``d`` vanishes."""
    if isinstance(x, Param):
        return lx.give_up([x], f"a parameter cut into pieces at node {node.name}")
    if isinstance(x, Free):
        return x
    if isinstance(x, Pieces):
        if d == x.dim and drop is not None:
            return remap(x.parts[lo], _without(d, drop)) or lx.give_up([x], f"unbind at node {node.name}")
        if d == x.dim and hi - lo == 1:
            return x.parts[lo]
        if d == x.dim:
            return Pieces(d, x.parts[lo:hi])
        if any(d in _dims(p) for p in x.parts):
            return lx.give_up([x], f"a head or channel axis cut at node {node.name}")
        moved = remap_pieces(x, _without(d, drop)) if drop is not None else x
        return moved or lx.give_up([x], f"unbind at node {node.name}")
    if not isinstance(x, (Chan, Heads)):
        return lx.give_up([x], f"a split at node {node.name}")
    if d not in _dims(x):
        kept = remap(x, _without(d, drop)) if drop is not None else x
        return kept or lx.give_up([x], f"unbind at node {node.name}")
    if isinstance(x, Heads) and d == x.dim and drop is None and lo < hi:
        lx.fix_inner([x.var], f"every head cut in pieces at node {node.name}")
        return HeadSlice(x, lo, hi)  # the same channels of every head (a rotary embedding's halves)
    if isinstance(x, Heads) or drop is not None:
        return lx.give_up([x], f"a single channel or head taken out at node {node.name}")
    piece = cut_channels(lx, x, lo, hi)
    return piece if piece is not None else lx.give_up([x], f"a cut through a channel's entries at node {node.name}")


def cut_channels(lx: Lifter, x: Chan, lo: int, hi: int) -> Chan | None:
    """The channels at indices ``lo … hi - 1`` of ``x``'s axis (``None`` when a cut splits one channel's entries).

    A segment the range cuts becomes a new variable for the channels inside it (``Lifter.sub_var``).
    """
    placed: list[tuple[Seg, int]] = []
    for seg, at in x.offsets():
        if seg.skip:
            return None  # a key head's channels repeated for its query heads: not cut apart
        step = seg.stride * seg.inner
        first = max(0, -((at - lo) // step))  # the first channel starting at or after lo
        last = min(seg.size, -((at - hi) // step))  # past the last channel starting before hi
        if 0 < first <= seg.size and at + (first - 1) * step + seg.inner > lo:
            return None  # the channel before ``first`` runs into the range
        if last > first and at + (last - 1) * step + seg.inner > hi:
            return None  # the last channel runs past it
        if last > first:
            placed.append((Seg(lx.sub_var(seg.var, first, last), last - first, seg.inner, seg.stride),
                           at + first * step - lo))
    return Chan.placed(x.dim, placed) if placed else None


def rows(lx: Lifter, x: Chan, count: int, size: int, row_dim: int, part_dim: int) -> Pieces | None:
    """``x``'s channel axis seen as ``count`` rows of ``size`` (``view(..., count, size, ...)``): one piece per row."""
    parts = []
    for i in range(count):
        row = cut_channels(lx, x, i * size, (i + 1) * size)
        if row is None:
            return None
        parts.append(row.moved(part_dim))
    return Pieces(row_dim, tuple(parts))


def _dims(x: Chan | Heads) -> tuple[int, ...]:
    return (x.dim,) if isinstance(x, Chan) else (x.block_dim, x.dim)


def _without(d: int, r: int) -> dict[int, int]:
    """Of ``r`` dims, those after ``d`` move down by one (``d`` itself disappears)."""
    return {k: k - (k > d) for k in range(r) if k != d}


def join_cut(lx: Lifter, node: fx.Node, a: Chan, b: Chan) -> bool:
    """Join two channel axes of one width whose segments differ (a conv's output added to a zero-padded
    shortcut): both are cut at every segment boundary of either, and the pieces join one by one. ``False``
    (nothing joined) when a boundary falls inside a channel's entries or the pieces do not match."""
    if a.dim != b.dim or a.width != b.width:
        return False
    if not (a.packed and b.packed):
        la, lb = sorted(a.offsets(), key=lambda p: p[1]), sorted(b.offsets(), key=lambda p: p[1])
        if [(s.layout, at) for s, at in la] != [(s.layout, at) for s, at in lb]:
            return False
        for (sa, _), (sb, _) in zip(la, lb, strict=True):
            lx.union(sa.var, sb.var, node)
        return True
    cuts = sorted({at for x in (a, b) for _, at in x.offsets()} | {a.width})
    for x in (a, b):
        for seg, at in x.offsets():
            if any(at < c < at + seg.width and (c - at) % seg.inner for c in cuts):
                return False
    pieces = [[cut_channels(lx, x, lo, hi) for lo, hi in itertools.pairwise(cuts)] for x in (a, b)]
    for pa, pb in zip(*pieces, strict=True):
        assert pa is not None and pb is not None and len(pa.segs) == len(pb.segs) == 1
        if (pa.segs[0].size, pa.segs[0].inner) != (pb.segs[0].size, pb.segs[0].inner):
            return False
    for pa, pb in zip(*pieces, strict=True):
        assert pa is not None and pb is not None
        lx.union(pa.segs[0].var, pb.segs[0].var, node)
    return True
