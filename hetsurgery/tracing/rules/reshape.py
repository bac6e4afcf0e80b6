"""Rules for ops that move, split or merge dims: flatten, view/reshape, transpose/permute, (un)squeeze.

The channel axis follows the dims. Merging the channel dim with the dims after it multiplies each
segment's ``inner`` (a conv channel owns H*W consecutive features after a flatten); splitting a plain
channel dim in two makes attention heads (``Heads``), splitting it in three (``(3, heads, head_dim)``) or
splitting concatenated channels makes ``Pieces``. Merging a head (or piece) dim back *after* the channel
dim interleaves the pieces: channel shuffle (``view(N, g, C/g, H, W)``, ``transpose(1, 2)``, ``view(N, C,
H, W)``) puts channel ``c`` of piece ``i`` at ``c*g + i`` (``Seg.stride``). Anything else freezes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import arg, norm_dim, rank, shape, value
from hetsurgery.tracing.rules.split import rows
from hetsurgery.tracing.values import (
    Chan,
    Heads,
    Param,
    Pieces,
    Seg,
    Tracked,
    Value,
    channel_dims,
    remap,
    remap_pieces,
    vars_of,
)


def flatten(lx: Lifter, node: fx.Node) -> Value:
    """nn.Flatten / torch.flatten / Tensor.flatten: a reshape whose sizes come from the input."""
    return _reshape_to(lx, node, node.args[0], shape(node), literal=[])


def reshape(lx: Lifter, node: fx.Node) -> Value:
    src = node.args[0]
    sizes = node.args[1:] if node.op == "call_method" else (arg(node, 1, "shape"),)
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    return _reshape_to(lx, node, src, shape(node), literal=list(sizes))


def transpose(lx: Lifter, node: fx.Node) -> Value:
    src = node.args[0]
    x = value(lx, src)
    r = rank(src)
    if isinstance(x, Param):
        return lx.give_up([x], f"transpose of a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads, Pieces)):
        return x
    order = _permutation(node, r)
    if order is None:
        return lx.give_up([x], f"transpose at node {node.name}")
    return _moved(x, {old: new for new, old in enumerate(order)}) or lx.give_up([x], node.name)


def _moved(x: Chan | Heads | Pieces, mapping: dict[int, int]) -> Chan | Heads | Pieces | None:
    return remap_pieces(x, mapping) if isinstance(x, Pieces) else remap(x, mapping)


def unsqueeze(lx: Lifter, node: fx.Node) -> Value:
    """unsqueeze / squeeze / expand: dims of extent 1 appear or vanish; the channel dims keep their extent."""
    src = node.args[0]
    x = value(lx, src)
    before, after = shape(src), shape(node)
    if isinstance(x, Param):
        if node.target in ("expand", "expand_as") and before is not None and after is not None \
                and len(before) == len(after):
            return Param(x.name, x.shape)
        return lx.give_up([x], f"reshaping a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads, Pieces)) or before is None or after is None:
        return x
    mapping = _align_unit_dims(before, after, node)
    moved = _moved(x, mapping) if mapping is not None else None
    return moved if moved is not None else lx.give_up([x], f"squeeze of the channel dim at node {node.name}")


def _permutation(node: fx.Node, r: int) -> list[int] | None:
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", node.target)
    if node.op == "call_function" and node.target is getattr:
        target = node.args[1]
        return list(range(r))[::-1] if target == "T" else [*range(r - 2), r - 1, r - 2]
    if target in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = norm_dim(arg(node, 1, "dim0"), r), norm_dim(arg(node, 2, "dim1"), r)
        order = list(range(r))
        order[d0], order[d1] = d1, d0
        return order
    if target == "permute":
        raw: list[Any] = list(node.args[1:]) if node.op == "call_method" else [arg(node, 1, "dims")]
        if len(raw) == 1 and isinstance(raw[0], (list, tuple)):
            raw = list(raw[0])
        return [norm_dim(d, r) for d in raw] if all(isinstance(d, int) for d in raw) else None
    if target == "t":
        return list(range(r))[::-1]
    return None


def _align_unit_dims(before: tuple[int, ...], after: tuple[int, ...], node: fx.Node) -> dict[int, int] | None:
    """Map dims of ``before`` onto ``after`` when they differ only by dims of extent 1 (or expand)."""
    if len(before) == len(after):
        return {d: d for d in range(len(before))}
    if node.target == "expand" or node.target == "expand_as":
        lead = len(after) - len(before)
        return {d: d + lead for d in range(len(before))}
    mapping: dict[int, int] = {}
    i = j = 0
    while i < len(before) and j < len(after):
        if before[i] == after[j] and not (before[i] == 1 and len(before) - i > len(after) - j):
            mapping[i] = j
            i += 1
            j += 1
        elif before[i] == 1:
            i += 1
        elif after[j] == 1:
            j += 1
        else:
            return None
    return mapping


def dim_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of ``a`` and ``b`` whose products match (how view/reshape regroups dims)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            groups.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return []
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                return []
        groups.append((gi, gj))
    return groups


def _reshape_to(lx: Lifter, node: fx.Node, src: Any, out: tuple[int, ...] | None, literal: list[Any]) -> Value:
    x = value(lx, src)
    before = shape(src)
    if isinstance(x, Param):
        return lx.give_up([x], f"reshaping a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads, Pieces)):
        return x
    if before is None or out is None:
        return lx.give_up([x], f"reshape without known shapes at node {node.name}")
    groups = dim_groups(before, out)
    result = _regroup(lx, node, x, before, out, groups, _copies(src))
    if result is None:
        return lx.give_up([x], f"a reshape the rules cannot follow at node {node.name} "
                               f"({tuple(before)} -> {tuple(out)})")
    _note_literal_width(lx, node, result, literal)
    return result


def _copies(src: Any) -> set[int]:
    """The dims of ``src`` that hold copies of one entry (stride 0 and more than one index: ``expand``)."""
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    stride, size = getattr(meta, "stride", None), getattr(meta, "shape", None)
    if stride is None or size is None:
        return set()
    return {d for d, (st, n) in enumerate(zip(stride, size, strict=True)) if st == 0 and n > 1}


def _regroup(lx: Lifter, node: fx.Node, x: Chan | Heads | Pieces, a: tuple[int, ...], b: tuple[int, ...],
             groups: list[tuple[list[int], list[int]]], copies: set[int]) -> Chan | Heads | Pieces | None:
    if isinstance(x, Heads):
        return _regroup_heads(lx, node, x, a, groups, copies)
    if isinstance(x, Pieces):
        return _regroup_pieces(lx, node, x, a, groups)
    for gi, gj in groups:
        if x.dim not in gi:
            continue
        if len(gi) == 1 and len(gj) == 1:
            return x.moved(gj[0])
        if len(gj) == 1 and gi[0] == x.dim:  # merge the channel dim with the dims after it
            k = math.prod(a[d] for d in gi[1:])
            return Chan(gj[0], tuple(replace(s, inner=s.inner * k) for s in x.segs),
                        None if x.at is None else tuple(at * k for at in x.at))
        if len(gi) != 1:
            return None
        k = math.prod(b[d] for d in gj[1:])
        if len(gj) >= 2 and all(s.inner == k for s in x.segs) and all(at % k == 0 for _, at in x.offsets()):
            return Chan(gj[0], tuple(replace(s, inner=1) for s in x.segs),  # unflatten
                        None if x.at is None else tuple(at // k for at in x.at))
        single = len(x.segs) == 1 and x.packed and x.segs[0].inner == 1
        if len(gj) == 2 and single:
            var, heads, size = x.segs[0].var, b[gj[0]], b[gj[1]]
            lx.constrain_blocks(var, size)
            return Heads(gj[0], gj[1], var, heads, size)
        if len(gj) == 2:  # concatenated or interleaved channels in rows: one piece per row
            return rows(lx, x, b[gj[0]], b[gj[1]], gj[0], gj[1])
        if len(gj) == 3 and single:  # (3, heads, head_dim): a piece of heads per projection
            pieces = rows(lx, x, b[gj[0]], b[gj[1]] * b[gj[2]], gj[0], gj[1])
            if pieces is None:
                return None
            parts = []
            for part in pieces.parts:
                assert isinstance(part, Chan)
                var = part.segs[0].var
                lx.constrain_blocks(var, b[gj[2]])
                parts.append(Heads(gj[1], gj[2], var, b[gj[1]], b[gj[2]]))
            return Pieces(gj[0], tuple(parts))
        return None
    return None


def _regroup_heads(lx: Lifter, node: fx.Node, x: Heads, a: tuple[int, ...],
                   groups: list[tuple[list[int], list[int]]], copies: set[int]) -> Tracked | None:
    where = {d: (gi, gj) for gi, gj in groups for d in gi if d in (x.block_dim, x.dim)}
    if len(where) != 2:
        return None
    (gi_b, gj_b), (gi_d, gj_d) = where[x.block_dim], where[x.dim]
    if gi_b == gi_d and len(gj_b) == 1 and gi_b[:2] == [x.block_dim, x.dim]:  # the heads side by side again
        k = math.prod(a[d] for d in gi_b[2:])
        if x.repeat > 1:  # every head once per query head: runs of one head, the others' heads in between
            width = x.size * k
            return Chan(gj_b[0], tuple(Seg(x.var, x.count * x.size, k, run=x.size, skip=(x.repeat - 1) * x.size)
                                       for _ in range(x.repeat)), tuple(r * width for r in range(x.repeat)))
        return Chan(gj_b[0], (Seg(x.var, x.count * x.size, k),))
    if gi_b[:1] == [x.block_dim] and len(gi_b) == 2 and gi_b[1] in copies and len(gj_b) == 1 and gi_d == [x.dim] \
            and len(gj_d) == 1:  # repeat_kv: (heads, copies) -> heads * copies, each head repeated in a row
        return replace(x, block_dim=gj_b[0], dim=gj_d[0], repeat=x.repeat * a[gi_b[1]])
    if gi_b == gi_d and len(gj_b) == 1 and gi_b[:2] == [x.dim, x.block_dim] and x.repeat == 1:  # channel shuffle
        parts = tuple(Chan(x.dim, (Seg(lx.sub_var(x.var, h * x.size, (h + 1) * x.size), x.size),))
                      for h in range(x.count))
        return _merge_pieces(lx, node, Pieces(x.block_dim, parts), gi_b, gj_b[0], a)
    if len(gi_b) == len(gj_b) == len(gi_d) == len(gj_d) == 1:
        return replace(x, block_dim=gj_b[0], dim=gj_d[0])
    return None


def _regroup_pieces(lx: Lifter, node: fx.Node, x: Pieces, a: tuple[int, ...],
                    groups: list[tuple[list[int], list[int]]]) -> Chan | Heads | Pieces | None:
    """Pieces keep their dims apart (each dim alone in its group), or merge with their channel dim (and the
    dims after both)."""
    dims = {x.dim, *(d for p in x.parts for d in channel_dims(p))}
    mapping: dict[int, int] = {}
    for gi, gj in groups:
        inside = dims & set(gi)
        if not inside:
            continue
        if len(gi) >= 2 and len(gj) == 1 and all(isinstance(p, Chan) for p in x.parts) \
                and set(gi[:2]) == {x.dim, x.parts[0].dim} and not dims & set(gi[2:]):
            return _merge_pieces(lx, node, x, gi, gj[0], a)
        if len(gi) != 1 or len(gj) != 1:
            return None
        mapping[gi[0]] = gj[0]
    return remap_pieces(x, mapping)


def _merge_pieces(lx: Lifter, node: fx.Node, x: Pieces, gi: list[int], out_dim: int, a: tuple[int, ...]
                  ) -> Chan | None:
    """Merge the pieces' dim with their channel dim (adjacent, in the order ``gi``): side by side when the
    pieces' dim comes first (a concatenation), interleaved when it comes last (channel shuffle). Dims merged
    after both make every channel ``inner`` entries wide (a flatten)."""
    count = len(x.parts)
    k = math.prod(a[d] for d in gi[2:])
    placed: list[tuple[Seg, int]] = []
    for i, part in enumerate(x.parts):
        assert isinstance(part, Chan)
        width = part.width
        for seg, at in part.offsets():
            if seg.skip:
                return None
            if gi[0] == x.dim:
                placed.append((seg, i * width + at))
            elif seg.inner == 1:
                placed.append((Seg(seg.var, seg.size, 1, seg.stride * count), at * count + i))
            else:
                return None  # a channel's entries would land apart
    if gi[0] != x.dim:  # interleaved: another width would move every other group's channels
        lx.fix_width([seg.var for seg, _ in placed], f"channels interleaved (a channel shuffle) at node {node.name}")
    if k > 1:
        placed = [(replace(seg, inner=seg.inner * k), at * k) for seg, at in placed]
    return Chan.placed(out_dim, placed)


def _note_literal_width(lx: Lifter, node: fx.Node, result: Chan | Heads | Pieces, literal: list[Any]) -> None:
    """A reshape that spells a channel extent as a number breaks when the width changes."""
    if not literal:
        return
    dims = [d for p in result.parts for d in channel_dims(p)] if isinstance(result, Pieces) else channel_dims(result)
    for d in dims:
        if d < len(literal) and isinstance(literal[d], int) and literal[d] != -1:
            lx.fix_width(vars_of(result), f"reshape at node {node.name} spells the width as {literal[d]}")
            return


def repeat_interleave(lx: Lifter, node: fx.Node) -> Value:
    """``repeat_interleave(x, n, dim)``: along the head dim each head ``n`` times in a row (grouped-query
    attention's key/value heads, ``Heads.repeat``); along a dim without channels the value passes; anything
    else (the channel dim, per-index counts, no dim) gives up."""
    src = node.args[0]
    x = value(lx, src)
    n, d = arg(node, 1, "repeats"), arg(node, 2, "dim")
    if not isinstance(x, (Chan, Heads)):
        return x if not isinstance(x, (Param, Pieces)) else lx.give_up([x], f"repeat_interleave at node {node.name}")
    if not isinstance(n, int) or not isinstance(d, int):
        return lx.give_up([x], f"repeat_interleave without a fixed count and dim at node {node.name}")
    d = norm_dim(d, rank(src))
    if isinstance(x, Heads) and d == x.block_dim:
        return replace(x, repeat=x.repeat * n)
    if d in channel_dims(x):
        return lx.give_up([x], f"repeat_interleave along the channel dim at node {node.name}")
    return x
