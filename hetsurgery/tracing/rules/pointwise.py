"""Rules for channel-wise ops: activations, pooling, broadcasting arithmetic, concat, reductions."""

from __future__ import annotations

import itertools
import operator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from hetsurgery.ir import Role
from hetsurgery.tracing.lifter import Lifter, free_of
from hetsurgery.tracing.rules import shifts
from hetsurgery.tracing.rules.args import arg, describe, norm_dim, rank, shape, value
from hetsurgery.tracing.rules.split import join_cut
from hetsurgery.tracing.values import (
    Chan,
    Free,
    HeadIndex,
    Heads,
    HeadSlice,
    Items,
    Param,
    Pieces,
    Seg,
    Tracked,
    Value,
    channel_dims,
    remap,
    shift,
    vars_of,
)


def elementwise(lx: Lifter, node: fx.Node) -> Value:
    """Activations, dropout, identity, casts: channel-wise and finite at 0, so the value passes through."""
    return _only_first_tracked(lx, node) or value(lx, node.args[0])


# how many trailing dims a pooling acts on; it leaves every leading index (batch, channel) apart
POOLED_DIMS: dict[object, int] = {
    **dict.fromkeys([nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, F.max_pool1d,
                     F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d], 1),
    **dict.fromkeys([nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d,
                     F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d], 2),
}


def spatial(lx: Lifter, node: fx.Node) -> Value:
    """Pooling, resizing, padding: act on trailing dims, which therefore must not carry channels.

    Batched ``(N, C, H, W)`` and unbatched ``(C, H, W)`` inputs alike: only the dims acted on matter.
    """
    refused = _only_first_tracked(lx, node)
    if refused is not None:
        return refused
    x = value(lx, node.args[0])
    if isinstance(x, Param):  # a pooled parameter no longer has the parameter's shape
        return lx.give_up([x], f"pooling or resizing a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads)):
        return x
    if shape(node) is None:  # return_indices=True: a tuple whose indices tensor no rule follows
        return lx.give_up([x], f"pooling that returns indices at node {node.name}")
    if node.target is F.pad:
        return shifts.pad(lx, node, x)
    r = rank(node.args[0])
    acted = _acted_dims(lx, node, r)
    if acted is None:
        return lx.give_up([x], f"{describe(node, lx)}, whose pooled dims the channel rules do not know")
    if any(d >= r - acted for d in channel_dims(x)):
        return lx.give_up([x], f"pooling, resizing or padding over the channel dim at node {node.name}")
    return x


def _acted_dims(lx: Lifter, node: fx.Node, r: int) -> int | None:
    key = type(lx.modules[str(node.target)]) if node.op == "call_module" else node.target
    if key is F.interpolate or key is nn.Upsample:
        return r - 2  # batched only: every dim after (N, C)
    return POOLED_DIMS.get(key)


def _only_first_tracked(lx: Lifter, node: fx.Node) -> Value | None:
    """A unary rule is wrong when another input carries channels: then give up (else ``None``)."""
    others = [value(lx, n) for n in node.all_input_nodes if n is not node.args[0]]
    if any(isinstance(o, (Chan, Heads, Pieces, Param, Items)) for o in others):
        return lx.give_up([value(lx, node.args[0]), *others], f"extra tensor arguments at node {node.name}")
    return None


# the function targets and Tensor methods that classify.py sends to the binary rule as divisions
DIVISIONS = frozenset({operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"})


def binary(lx: Lifter, node: fx.Node) -> Value:
    """Broadcasting arithmetic: the operands' channel axes line up and their groups join."""
    a, b = arg(node, 0, "input"), arg(node, 1, "other")
    out_rank = rank(node)
    operands = [(x, value(lx, x)) for x in (a, b)]
    result = join_aligned(lx, node, operands, out_rank)
    if isinstance(result, (Chan, Heads)):
        divisor = operands[1][1]
        if node.target in DIVISIONS and isinstance(divisor, (Chan, Heads, Param)):
            lx.block_pad(vars_of(result), f"division by a tracked tensor at node {node.name} (0/0 on padding)")
        if node.target in (operator.pow, torch.pow, "pow") and not _positive_number(b):
            lx.block_pad(vars_of(result), f"power with a non-positive exponent at node {node.name}")
    return result


def where(lx: Lifter, node: fx.Node) -> Value:
    """``torch.where(cond, a, b)``: ``a`` and ``b`` join as in arithmetic; the mask must not carry channels, and
    must be the same along every channel dim (extent 1, or an ``expand``ed copy: T5 masks its per-head bias)."""
    cond_src, a, b = arg(node, 0, "condition"), arg(node, 1, "input"), arg(node, 2, "other")
    cond = value(lx, cond_src)
    operands = [(x, value(lx, x)) for x in (a, b)]
    result = join_aligned(lx, node, operands, rank(node))
    dims = channel_dims(result) if isinstance(result, (Chan, Heads)) else \
        (result.dim,) if isinstance(result, HeadIndex) else ()
    if not isinstance(cond, Free) or not _same_along(cond_src, rank(node), dims):
        if isinstance(result, HeadIndex):
            lx.stick([result.var], f"a mask that differs between heads at node {node.name}")
            return result
        return lx.give_up([cond, result], f"a mask that differs along the channels at node {node.name}")
    return result


def _same_along(src: Any, out_rank: int, dims: tuple[int, ...]) -> bool:
    """Whether tensor ``src`` takes one value along each of ``dims`` (of a result of rank ``out_rank``)."""
    s = shape(src)
    if s is None:
        return True
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    stride = getattr(meta, "stride", None) or (1,) * len(s)
    lead = out_rank - len(s)
    return all(d - lead < 0 or s[d - lead] == 1 or stride[d - lead] == 0 for d in dims)


def join_aligned(lx: Lifter, node: fx.Node, operands: list[tuple[Any, Any]], out_rank: int) -> Value:
    """Join tensors that broadcast against each other; parameters among them become slots."""
    if any(isinstance(v, HeadSlice) for _, v in operands):
        return _slice_arithmetic(lx, node, operands, out_rank)
    if any(isinstance(v, HeadIndex) for _, v in operands):
        return _weights_arithmetic(lx, node, operands, out_rank)
    tracked = [(src, shift(v, out_rank - rank(src))) for src, v in operands if isinstance(v, (Chan, Heads))]
    if not tracked:  # no channel passes: parameters here are constants (a rotary table from inv_freq)
        lx.constant([v.name for _, v in operands if isinstance(v, Param)], node)
        return free_of([v for _, v in operands])
    out_shape = shape(node)
    ref_src, ref = tracked[0]
    if out_shape is None or any(out_shape[d] != s for d, s in _extents(ref, lx)):
        return lx.give_up([v for _, v in tracked], f"broadcast across the channel dim at node {node.name}")
    for src, v in operands:
        if v is ref or src is ref_src:
            continue
        _join_one(lx, node, ref, src, v, out_rank)
    return ref


def _join_one(lx: Lifter, node: fx.Node, ref: Tracked, src: Any, v: Any, out_rank: int) -> None:
    if isinstance(v, (Chan, Heads)):
        v = shift(v, out_rank - rank(src))
        if _same_layout(v, ref):
            for x, y in zip(vars_of(v), vars_of(ref), strict=True):
                lx.union(x, y, node)
        elif isinstance(v, Chan) and isinstance(ref, Chan) and join_cut(lx, node, v, ref):
            return
        elif _broadcasts(shape(src), out_rank, channel_dims(ref)):
            lx.freeze(vars_of(v), f"broadcast over its channel dim at node {node.name}")
        else:
            lx.give_up([v, ref], f"channel axes that do not line up at node {node.name}")
        return
    src_shape = v.shape if isinstance(v, Param) else shape(src)
    if isinstance(ref, Heads) and isinstance(v, Free) and src_shape is not None:
        lead = out_rank - len(src_shape)
        along_heads, inside = (d - lead >= 0 and src_shape[d - lead] > 1 for d in (ref.block_dim, ref.dim))
        if inside and not along_heads:  # a rotary embedding's cos/sin: the same for every head
            lx.fix_inner([ref.var], f"a tensor that varies inside each head ({v.why}) at node {node.name}")
            return
        if along_heads and not inside:
            lx.stick([ref.var], f"a tensor that differs between heads ({v.why}) at node {node.name}")
            return
    if src_shape is None or _broadcasts(src_shape, out_rank, channel_dims(ref)):
        if isinstance(v, Param):
            lead = out_rank - len(v.shape)
            lx.fix_axes(v.name, [d for d in range(len(v.shape)) if d + lead not in channel_dims(ref)],
                        f"an axis without channels at node {node.name}")
        return
    pdim = channel_dims(ref)[0] - (out_rank - len(src_shape))
    if (isinstance(v, Param) and isinstance(ref, Chan) and v.shape == lx.tensors[v.name].shape
            and v.shape[pdim] == ref.width):
        lx.add_slots(ref, v.name, pdim, Role.PRODUCE)
        lx.fix_axes(v.name, [d for d in range(len(v.shape)) if d != pdim],
                    f"an axis without channels at node {node.name}")
        return
    why = v.why if isinstance(v, Free) else f"a parameter used at node {node.name}"
    lx.give_up([ref, v], f"combined with an untracked tensor ({why}) at node {node.name}")


def _extents(v: Tracked, lx: Lifter) -> list[tuple[int, int]]:
    if isinstance(v, Chan):
        return [(v.dim, v.width)]
    return [(v.block_dim, v.extent), (v.dim, v.size)]


def _same_layout(a: Tracked, b: Tracked) -> bool:
    if isinstance(a, Chan) and isinstance(b, Chan):
        return a.dim == b.dim and [(s.layout, at) for s, at in a.offsets()] == \
            [(s.layout, at) for s, at in b.offsets()]
    if isinstance(a, Heads) and isinstance(b, Heads):
        return (a.block_dim, a.dim, a.count, a.size, a.repeat) == (b.block_dim, b.dim, b.count, b.size, b.repeat)
    return False


def _weights_arithmetic(lx: Lifter, node: fx.Node, operands: list[tuple[Any, Any]], out_rank: int) -> Value:
    """Attention weights scaled, masked or biased: still the heads of q. A learned bias per head (T5's relative
    position bias: a group of one channel per head, along the weights' head dim) moves with the heads; any
    other tensor that differs between heads keeps whole heads in place."""
    indexed = [(src, shift_index(v, out_rank - rank(src))) for src, v in operands if isinstance(v, HeadIndex)]
    ref = indexed[0][1]
    for _, w in indexed[1:]:
        if (w.dim, w.count) != (ref.dim, ref.count):
            lx.stick([ref.var, w.var], f"attention weights of different heads combined at node {node.name}")
        elif w.var != ref.var:
            lx.tie_heads(ref.var, w.var, node)
    for src, v in operands:
        if isinstance(v, HeadIndex) or not isinstance(src, fx.Node):  # a number (a scale) is the same for all
            continue
        if isinstance(v, Chan) and per_head_bias(lx, node, ref, v.moved(v.dim + out_rank - rank(src))):
            continue
        s = v.shape if isinstance(v, Param) else shape(src)
        d = ref.dim - (out_rank - len(s)) if s is not None else -1
        varies = s is not None and 0 <= d < len(s) and s[d] > 1
        if not isinstance(v, Free):
            lx.give_up([v], f"combined with attention weights at node {node.name}")
        if varies or not isinstance(v, Free):
            lx.stick([ref.var], f"a tensor that differs between heads is combined with attention weights at node "
                                f"{node.name}")
    return ref


def per_head_bias(lx: Lifter, node: fx.Node, weights: HeadIndex, c: Chan) -> bool:
    """A group of one channel per head along the weights' head dim (T5's relative position bias) moves with the
    heads: tied to them. ``False`` when ``c`` is not laid out that way."""
    if c.dim != weights.dim or len(c.segs) != 1 or c.segs[0].layout != (weights.count, 1, 1, 0, 0):
        return False
    var = c.segs[0].var
    lx.constrain_blocks(var, 1)
    lx.attend([var])
    lx.tie_heads(weights.var, var, node)
    return True


def shift_index(w: HeadIndex, delta: int) -> HeadIndex:
    return replace(w, dim=w.dim + delta)


def _slice_arithmetic(lx: Lifter, node: fx.Node, operands: list[tuple[Any, Any]], out_rank: int) -> Value:
    """Arithmetic on a part of every head (a rotary embedding's halves): with untracked tensors that are the
    same for every head it stays that part; anything else gives up."""
    parts = [(src, v) for src, v in operands if isinstance(v, HeadSlice)]
    (src, part), others = parts[0], [(s, v) for s, v in operands if v is not parts[0][1]]
    heads = shift(part.heads, out_rank - rank(src))
    assert isinstance(heads, Heads)
    part = HeadSlice(heads, part.lo, part.hi)
    for s, v in others:
        s_shape = shape(s)
        if isinstance(v, Free) and (s_shape is None or _broadcasts(s_shape, out_rank, (part.heads.block_dim,))):
            continue
        if isinstance(v, HeadSlice) and (v.lo, v.hi, v.heads.var) == (part.lo, part.hi, part.heads.var):
            continue
        return lx.give_up([v for _, v in operands], f"arithmetic on part of each head at node {node.name}")
    return part


def _broadcasts(src_shape: tuple[int, ...] | None, out_rank: int, dims: tuple[int, ...]) -> bool:
    """True when a tensor of ``src_shape`` has extent 1 (or no dim) at every channel dim."""
    if src_shape is None:
        return True
    lead = out_rank - len(src_shape)
    return all(d - lead < 0 or src_shape[d - lead] == 1 for d in dims)


def _positive_number(x: object) -> bool:
    return isinstance(x, (int, float)) and x > 0


def concat(lx: Lifter, node: fx.Node) -> Value:
    parts = list(arg(node, 0, "tensors"))
    out_rank = rank(node)
    dim = norm_dim(arg(node, 1, "dim", 0), out_rank)
    values = [value(lx, p) for p in parts]
    if any(isinstance(v, HeadSlice) for v in values):
        return _join_slices(lx, node, values, dim)
    if not any(isinstance(v, Chan) and v.dim == dim for v in values):
        return join_aligned(lx, node, list(zip(parts, values, strict=True)), out_rank)
    placed: list[tuple[Seg, int]] = []
    base = 0
    for p, v in zip(parts, values, strict=True):
        if isinstance(v, Chan) and v.dim == dim:
            placed.extend((seg, base + at) for seg, at in v.offsets())
            base += v.width
            continue
        # an untracked part: a frozen group of its own, so consumers still get exact slots
        extent = (shape(p) or (0,) * out_rank)[dim]
        fresh = lx.new_var(extent, node)
        why = v.why if isinstance(v, Free) else f"a part that does not carry channels along dim {dim}"
        lx.give_up([v], f"concatenated at node {node.name} along a non-channel dim")
        lx.freeze([fresh], f"concatenated from {why} at node {node.name}", by_design=why == "model input")
        placed.append((Seg(fresh, extent), base))
        base += extent
    return Chan.placed(dim, placed)


def _join_slices(lx: Lifter, node: fx.Node, values: list[Any], dim: int) -> Value:
    """Parts of every head put back side by side (``cat((-x2, x1), -1)`` in ``rotate_half``): the heads again
    when the parts cover each head exactly once, in any order (the order inside a head is fixed already)."""
    first = values[0]
    if all(isinstance(v, HeadSlice) and v.heads == first.heads for v in values) and first.heads.dim == dim:
        spans = sorted((v.lo, v.hi) for v in values)
        if spans[0][0] == 0 and spans[-1][1] == first.heads.size and \
                all(a[1] == b[0] for a, b in itertools.pairwise(spans)):
            return first.heads
    return lx.give_up(values, f"parts of heads concatenated at node {node.name}")


def reduce(lx: Lifter, node: fx.Node) -> Value:
    """mean/sum/amax/... over dims: over the channel dim the group ends (the result is invariant)."""
    src = node.args[0]
    x = value(lx, src)
    r = rank(src)
    dims = arg(node, 1, "dim")
    keep = bool(arg(node, 2, "keepdim", False))
    reduced = list(range(r)) if dims is None else [norm_dim(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if isinstance(x, Param):
        return lx.give_up([x], f"reduction of a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads)):
        return free_of([x])
    if any(d in channel_dims(x) for d in reduced):
        if not all(d in reduced for d in channel_dims(x)):
            return lx.give_up([x], f"reduction over part of the heads at node {node.name}")
        lx.block_pad(vars_of(x), f"reduction over the channels at node {node.name}")
        return Free("reduced over channels")
    mapping = after_reduce(r, reduced, keep)
    return remap(x, mapping) or lx.give_up([x], f"reduction at node {node.name}")


def after_reduce(r: int, reduced: list[int], keep: bool) -> dict[int, int]:
    if keep:
        return {d: d for d in range(r)}
    mapping, at = {}, 0
    for d in range(r):
        if d in reduced:
            continue
        mapping[d] = at
        at += 1
    return mapping


def softmax(lx: Lifter, node: fx.Node) -> Value:
    """Softmax along one dim: over plain channels or inside each head it commutes with the permutation.

    Across the heads it does not: each head is permuted on its own, so the channels it pairs get mixed up.
    """
    src = node.args[0]
    x = value(lx, src)
    if isinstance(x, Param):
        return lx.give_up([x], f"softmax of a parameter at node {node.name}")
    dim = arg(node, 1, "dim")
    if dim is None and node.op == "call_module":
        dim = lx.modules[str(node.target)].dim
    d = None if dim is None else norm_dim(dim, rank(src))
    if isinstance(x, HeadIndex) and d in (None, x.dim):
        lx.stick([x.var], f"softmax across the heads at node {node.name}")
        return Free("softmax across the heads")
    if not isinstance(x, (Chan, Heads)):
        return x
    if isinstance(x, Heads) and d in (None, x.block_dim):  # None: torch picks a dim implicitly
        return lx.give_up([x], f"softmax across the heads at node {node.name}")
    if d is None or d in channel_dims(x):
        lx.block_pad(vars_of(x), f"softmax over the channels at node {node.name}")
    return x


def normalize(lx: Lifter, node: fx.Node) -> Value:
    """``F.normalize(x, p, dim)``: a p-norm along one dim. Along the channels (or inside each head) it does not
    depend on their order, and zero channels add nothing to it; along another dim each channel is on its own.
    Across the heads it mixes channels that the heads permute differently."""
    src = node.args[0]
    x = value(lx, src)
    refused = _only_first_tracked(lx, node)
    if refused is not None:
        return refused
    if isinstance(x, Param):
        return lx.give_up([x], f"normalising a parameter at node {node.name}")
    if isinstance(x, Heads) and norm_dim(arg(node, 2, "dim", 1), rank(src)) == x.block_dim:
        return lx.give_up([x], f"a norm across the heads at node {node.name}")
    return x
