"""Rules for attention: nn.MultiheadAttention, matmul contractions, F.scaled_dot_product_attention.

Within one head, the coordinates of q and k may be permuted together (q·k is unchanged) and those of v
together with the output projection's columns; heads are ``Blocks(heads, head_dim)``. Whole heads may also
trade places when q, k and v move alike: the attention ties the q/k group's heads to the v group's
(``Lifter.tie_heads``), whether it is one call (``scaled_dot_product_attention``) or written out, ``softmax(q
@ kᵀ) @ v``, where the weights carry the heads of q (``HeadIndex``) to the product with v. Grouped-query
attention repeats each key/value head for several query heads (``repeat_kv`` or ``enable_gqa``): the query
group is laid over the key group (``Lifter.repeat_heads``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import fx, nn

from hetsurgery.ir import Role, Slot
from hetsurgery.tracing.lifter import Lifter, free_of
from hetsurgery.tracing.rules.args import arg, rank, shape, value
from hetsurgery.tracing.rules.pointwise import per_head_bias
from hetsurgery.tracing.values import (
    Chan,
    Free,
    HeadIndex,
    Heads,
    HeadSlice,
    Items,
    Param,
    Seg,
    Tracked,
    Value,
    vars_of,
)

FIXED_MHA = "nn.MultiheadAttention keeps embed_dim fixed (write the attention by hand to change widths)"


def multihead_attention(lx: Lifter, node: fx.Node) -> Value:
    mod: nn.MultiheadAttention = lx.modules[str(node.target)]
    t = str(node.target)
    srcs = [arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")]
    qkv = [value(lx, s) for s in srcs]
    r = rank(srcs[0])
    plain = all(isinstance(v, Chan) and v.dim == r - 1 and len(v.segs) == 1 and v.segs[0].inner == 1 and v.packed
                for v in qkv)
    if not mod._qkv_same_embed_dim or not plain:
        for p in lx.module_params(t):
            lx.distrust(p, f"nn.MultiheadAttention {t!r} with separate k/v dims or untracked inputs")
        return Items((lx.give_up(qkv, f"nn.MultiheadAttention at node {node.name}"), Free("attention weights")))
    e, hd = mod.embed_dim, mod.head_dim
    stream = qkv[0].segs[0].var
    for v, src in zip(qkv, srcs, strict=True):
        lx.union(v.segs[0].var, stream, node)
        lx.observe(v, src)
    lx.slot(stream, Slot(f"{t}.in_proj_weight", 1, role=Role.CONSUME))
    for p in (f"{t}.out_proj.weight", f"{t}.out_proj.bias"):
        if p in lx.tensors:
            lx.slot(stream, Slot(p, 0))
    lx.fix_width([stream], FIXED_MHA)
    qk, vv = lx.new_var(e, node), lx.new_var(e, node)
    for var, offsets, extra in ((qk, (0, e), "bias_k"), (vv, (2 * e,), "bias_v")):
        lx.constrain_blocks(var, hd)
        lx.fix_width([var], FIXED_MHA)
        for at in offsets:
            lx.slot(var, Slot(f"{t}.in_proj_weight", 0, offset=at))
            if f"{t}.in_proj_bias" in lx.tensors:
                lx.slot(var, Slot(f"{t}.in_proj_bias", 0, offset=at))
        if f"{t}.{extra}" in lx.tensors:
            lx.slot(var, Slot(f"{t}.{extra}", 2))
            lx.fix_axes(f"{t}.{extra}", [0, 1], f"a leading axis of {t}.{extra}")
    lx.slot(vv, Slot(f"{t}.out_proj.weight", 1, role=Role.CONSUME))
    return Items((Chan(r - 1, (Seg(stream, e),)), Free("attention weights")))


def matmul(lx: Lifter, node: fx.Node) -> Value:
    """``a @ b``: a's last dim meets b's second-to-last; batch dims broadcast."""
    sa, sb = arg(node, 0, "input"), arg(node, 1, "other")
    a, b = value(lx, sa), value(lx, sb)
    ra, rb, ro = rank(sa), rank(sb), rank(node)
    if ra < 2 or rb < 2:
        return lx.give_up([a, b], f"matmul with a vector at node {node.name}")
    ka, kb = _contracted(a, ra - 1), _contracted(b, rb - 2)
    out: list[Tracked] = []
    if isinstance(a, HeadIndex) and isinstance(b, Heads) and not kb:
        return _weighted_values(lx, node, a, b, ra, rb, ro)
    for x in (a, b):  # attention weights in any other product: their heads stay in place
        if isinstance(x, HeadIndex):
            lx.stick([x.var], f"attention weights in a product the rules do not follow at node {node.name}")
    a, b = (Free("attention weights") if isinstance(x, HeadIndex) else x for x in (a, b))
    if ka and kb:
        if not meet(lx, node, a, b, ra, rb):
            return lx.give_up([a, b], f"a contraction the rules cannot follow at node {node.name}")
        lx.block_zip(vars_of(a), f"contracted with another group at node {node.name}")
        if isinstance(a, Heads):  # attention weights: their head dim holds the heads of q
            return HeadIndex(a.block_dim + ro - ra, a.var, a.extent)
    elif ka and isinstance(b, Param) and isinstance(a, Chan):
        lx.consume(a, sa, b.name, rb - 2)
        out.append(_produce_from_param(lx, node, b.name, rb - 1, ro - 1))
        lx.fix_axes(b.name, range(rb - 2), f"a batch axis of the matmul at node {node.name}")
    elif kb and isinstance(a, Param) and isinstance(b, Chan):
        lx.consume(b, sb, a.name, ra - 1)
        out.append(_produce_from_param(lx, node, a.name, ra - 2, ro - 2))
        lx.fix_axes(a.name, range(ra - 2), f"a batch axis of the matmul at node {node.name}")
    elif ka or kb:
        return lx.give_up([a, b], f"contracted with an untracked tensor at node {node.name}")
    else:
        for x, src_rank, keep in ((a, ra, ra - 2), (b, rb, rb - 1)):
            if isinstance(x, Param):
                return lx.give_up([a, b], f"matmul with a parameter at node {node.name}")
            if isinstance(x, (Chan, Heads)):
                moved = _passes_through(x, src_rank, ro, keep)
                if moved is None:
                    return lx.give_up([a, b], f"matmul at node {node.name}")
                out.append(moved)
    if len(out) > 1:
        return lx.give_up(out, f"matmul result with two channel axes at node {node.name}")
    return out[0] if out else free_of([a, b])


def scaled_dot_product_attention(lx: Lifter, node: fx.Node) -> Value:
    srcs = [arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")]
    q, k, v = (value(lx, s) for s in srcs)
    mask_src = arg(node, 3, "attn_mask")
    mask = value(lx, mask_src)
    r = rank(srcs[0])
    bias = isinstance(mask, Chan) and isinstance(q, Heads) and \
        per_head_bias(lx, node, HeadIndex(q.block_dim, q.var, q.extent), mask.moved(mask.dim + r - rank(mask_src)))
    if isinstance(mask, (Chan, Heads, HeadSlice, HeadIndex, Param)) and not bias:
        lx.give_up([mask], f"attention mask that carries channels at node {node.name}")
    if arg(node, 7, "enable_gqa", False) and isinstance(k, Heads) and isinstance(v, Heads) and isinstance(q, Heads):
        k, v = _repeated_for(q, k), _repeated_for(q, v)  # F.sdpa(..., enable_gqa=True) repeats them itself
    if isinstance(q, (Chan, Heads)) or isinstance(k, (Chan, Heads)):
        if not (_contracted(q, r - 1) and _contracted(k, r - 1) and meet(lx, node, q, k, r, r)):
            return lx.give_up([q, k, v], f"attention with query and key the rules cannot follow at node {node.name}")
        lx.block_zip(vars_of(q), f"query and key meet in attention at node {node.name}")
        if arg(node, 6, "scale") is None:
            lx.block_pad(vars_of(q), f"attention at node {node.name} scales by 1/sqrt(width)")
    elif isinstance(q, Param) or isinstance(k, Param):
        return lx.give_up([q, k, v], f"attention on parameters at node {node.name}")
    if isinstance(q, Heads):
        weights = HeadIndex(q.block_dim, q.var, q.extent)
        if _per_head(mask_src, q.block_dim, r) and not bias:
            lx.stick(vars_of(q), f"a mask that differs between heads at node {node.name}")
        if isinstance(v, Heads):
            return _weighted_values(lx, node, weights, v, r, rank(srcs[2]), rank(node))
        lx.stick(vars_of(q), f"attention values without heads at node {node.name}")
    if isinstance(v, (Chan, Heads)):
        moved = _passes_through(v, rank(srcs[2]), rank(node), rank(srcs[2]) - 1)
        return moved if moved is not None else lx.give_up([v], f"attention value at node {node.name}")
    if isinstance(v, Param):
        return lx.give_up([v], f"attention on parameters at node {node.name}")
    return free_of([q, k, v])


def meet(lx: Lifter, node: fx.Node, a: Any, b: Any, ra: int, rb: int) -> bool:
    """Two contracted operands (q and k): plain channels join; heads at the same batch dim join head by head,
    a key head repeated for several query heads lays the query group over the key group."""
    if isinstance(a, Chan) and isinstance(b, Chan):
        if not _same_heads(a, b, ra, rb):
            return False
        for x, y in zip(vars_of(a), vars_of(b), strict=True):
            lx.union(x, y, node)
        return True
    if not (isinstance(a, Heads) and isinstance(b, Heads) and a.size == b.size and a.extent == b.extent
            and a.block_dim - ra == b.block_dim - rb):
        return False
    if a.repeat == b.repeat:
        if a.repeat > 1:  # two repeated groups meet: the rules lay one group over another only once
            return False
        lx.union(a.var, b.var, node)
    elif a.repeat == 1:
        lx.repeat_heads(a.var, b.var, b.repeat, b.size, node)
    elif b.repeat == 1:
        lx.repeat_heads(b.var, a.var, a.repeat, a.size, node)
    else:
        return False
    lx.attend([a.var, b.var])
    return True


def _weighted_values(lx: Lifter, node: fx.Node, w: HeadIndex, v: Heads, rw: int, rv: int, ro: int) -> Value:
    """Attention weights (heads of q at ``w.dim``) times values (heads of v): head ``h`` of the output is
    head ``h`` of v weighted by head ``h`` of q, so the heads of q and of v move together."""
    if v.dim != rv - 1 or w.dim - rw != v.block_dim - rv or w.count != v.extent or w.dim >= rw - 2:
        lx.stick([w.var], f"attention weights meet values along other dims at node {node.name}")
        moved = _passes_through(v, rv, ro, rv - 1)
        return moved if moved is not None else lx.give_up([v], f"attention value at node {node.name}")
    lx.attend([w.var, v.var])
    lx.tie_heads(w.var, v.var, node)
    moved = _passes_through(v, rv, ro, rv - 1)
    return moved if moved is not None else lx.give_up([v], f"attention value at node {node.name}")


def _repeated_for(q: Heads, x: Heads) -> Heads:
    """``x``'s heads repeated to as many as ``q`` has (what ``enable_gqa`` does inside the attention)."""
    if x.repeat == 1 and x.count < q.extent and q.extent % x.count == 0:
        return replace(x, repeat=q.extent // x.count)
    return x


def _per_head(mask: Any, head_dim: int, r: int) -> bool:
    """Whether an attention mask takes a different value for each head (extent > 1 along the head dim)."""
    s = shape(mask)
    if s is None:
        return False
    d = head_dim - (r - len(s))
    return 0 <= d < len(s) and s[d] > 1


def _contracted(x: Any, dim: int) -> bool:
    return isinstance(x, (Chan, Heads)) and x.dim == dim


def _same_heads(a: Any, b: Any, ra: int, rb: int) -> bool:
    """Two contracted operands: plain channels, or heads whose head index sits at the same batch dim."""
    if isinstance(a, Chan) and isinstance(b, Chan):
        return [(s.layout, at) for s, at in a.offsets()] == \
            [(s.layout, at) for s, at in b.offsets()]
    if isinstance(a, Heads) and isinstance(b, Heads):
        return (a.count, a.size) == (b.count, b.size) and a.block_dim - ra == b.block_dim - rb
    return False


def _passes_through(x: Tracked, src_rank: int, out_rank: int, keep: int) -> Tracked | None:
    """A non-contracted operand: its channel dim must be the kept matrix dim; heads must be a batch dim."""
    lead = out_rank - src_rank
    if x.dim != keep:
        return None
    if isinstance(x, Heads):
        if x.block_dim >= src_rank - 2:
            return None
        return replace(x, block_dim=x.block_dim + lead, dim=x.dim + lead)
    return x.moved(x.dim + lead)


def _produce_from_param(lx: Lifter, node: fx.Node, param: str, pdim: int, out_dim: int) -> Chan:
    size = lx.tensors[param].shape[pdim]
    var = lx.new_var(size, node)
    lx.slot(var, Slot(param, pdim))
    out = Chan(out_dim, (Seg(var, size),))
    lx.observe(out, node, producer=True)
    return out


