"""Rules for the graph's edges: inputs, outputs, attributes, indexing, size reads, unknown ops."""

from __future__ import annotations

import builtins

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from hetsurgery.ir.group import MODEL_OUTPUT
from hetsurgery.tracing.lifter import Lifter, params_in
from hetsurgery.tracing.probe import probe
from hetsurgery.tracing.rules.args import arg, describe, norm_dim, number, rank, shape, value
from hetsurgery.tracing.rules.split import cut_channels
from hetsurgery.tracing.values import (
    MODEL_INPUT,
    Chan,
    Free,
    HeadIndex,
    Heads,
    HeadSlice,
    Items,
    Param,
    Pieces,
    ShapeOf,
    Value,
    channel_dims,
    remap,
    remap_pieces,
    vars_of,
)


def placeholder(lx: Lifter, node: fx.Node) -> Value:
    return Free(MODEL_INPUT)


def output(lx: Lifter, node: fx.Node) -> Value:
    """Everything the model returns is frozen by design, however deeply it sits in dicts, lists, tuples,
    namedtuples or dataclasses: fx lists every node the output's nested structure refers to."""
    for src in node.all_input_nodes:
        v = lx.env[src]
        for p in params_in(v):
            lx.distrust(p, "returned as a model output" + (f" ({v.why})" if isinstance(v, Free) else ""))
        weights = _weights_in(v)
        if weights:  # returned attention weights show the order of the heads, not channels
            lx.stick([w.var for w in weights], f"attention weights returned as a model output ({src.name})")
        lx.freeze(_channel_vars(v), MODEL_OUTPUT, by_design=True)
    return Free(MODEL_OUTPUT)


def _weights_in(v: object) -> list[HeadIndex]:
    if isinstance(v, HeadIndex):
        return [v]
    if isinstance(v, Items):
        return [w for item in v.items for w in _weights_in(item)]
    return []


def _channel_vars(v: object) -> list[int]:
    """The variables whose channels ``v`` holds (attention weights hold none)."""
    if isinstance(v, HeadIndex):
        return []
    if isinstance(v, Items):
        return [x for item in v.items for x in _channel_vars(item)]
    return vars_of(v)


def container(lx: Lifter, node: fx.Node) -> Value:
    """A dataclass built from values (``ModelOutput(logits=y)``): a tuple of what it holds; reading a field
    back (``getattr``) is an op no rule knows, so it freezes what it touches."""
    return Items(tuple(lx.env[src] for src in node.all_input_nodes))


def get_attr(lx: Lifter, node: fx.Node) -> Value:
    name = str(node.target)
    if name in lx.tensors:
        return Param(lx.canonical[name], tuple(lx.tensors[name].shape))
    return Free("constant")


def getitem(lx: Lifter, node: fx.Node) -> Value:
    src, idx = node.args[0], number(node.args[1])
    v = value(lx, src)
    if isinstance(idx, str):  # getattr(result, "values" | "indices") on what torch.max returns
        idx = {"values": 0, "indices": 1}[idx]
        if not isinstance(v, Items):
            return lx.give_up([v], f"attribute {node.args[1]} read at node {node.name}")
    if isinstance(v, Items):
        return v.items[idx] if isinstance(idx, int) and -len(v.items) <= idx < len(v.items) else Free()
    if isinstance(v, ShapeOf):
        dims = _dims_read(idx, len(shape(src.args[0]) or ()) if isinstance(src, fx.Node) else 0)
        _note_width_read(lx, v.of, dims, node)
        return Free("size")
    if isinstance(v, Param):
        out = shape(node)
        if out is not None and len(out) == len(v.shape) and _all_slices(idx):
            return Param(v.name, out)
        if _by_untracked_tensor(lx, idx):  # a table read by index (a relative position bias): no channel axes
            lx.fix_axes(v.name, range(len(v.shape)), f"an axis of a table read by index at node {node.name}")
            return Free("read from a parameter by index")
        lx.distrust(v.name, f"indexed at node {node.name}")
        return Free("indexed parameter")
    if isinstance(v, (Chan, Heads, Pieces)):
        return _index_tensor(lx, node, v, idx, rank(src))
    return Free(v.why if isinstance(v, Free) else "constant")


def shape_read(lx: Lifter, node: fx.Node) -> Value:
    """``x.size()``, ``x.size(d)``, ``x.shape``, ``x.dim()``, ``x.dtype``: note when a width is read.

    ``x.new_zeros(...)`` and ``torch.zeros_like(x)`` read only sizes, dtype and device: their result holds no
    channel's values.
    """
    src = node.args[0]
    v = value(lx, src)
    if isinstance(v, Pieces):  # which dim is read is not followed through pieces: keep every width
        lx.fix_width(vars_of(v), f"the shape of pieces of a channel axis is read at node {node.name}")
        return Free("size")
    if not isinstance(v, (Chan, Heads)):
        return Free(v.why if isinstance(v, Free) else "size")
    attr = node.args[1] if node.target is builtins.getattr else node.target
    if node.op == "call_method" and attr == "size":
        d = arg(node, 1, "dim")
        if d is None:
            return ShapeOf(v)
        _note_width_read(lx, v, [norm_dim(d, rank(src))], node)
        return Free("size")
    if attr in ("shape",):
        return ShapeOf(v)
    if attr in ("numel",):
        _note_width_read(lx, v, list(range(rank(src))), node)
    return Free("size")


def unknown(lx: Lifter, node: fx.Node) -> Value:
    """An op no rule knows: passed through when the equivariance probe passes it (``tracing.probe``), else
    freeze every group it touches and distrust the parameters it reads."""
    passed, why = probe(lx, node)
    if passed is not None:
        return passed
    reason = f"touched by {describe(node, lx)}, which the channel rules do not know"
    if lx.probes is not None and node in lx.probes:
        reason += f" (not probed: {why})" if why.startswith("it reads") or why.startswith("the module") \
            or why.startswith("its output") else f" (probe: {why})"
    values = [value(lx, a) for a in node.all_input_nodes]
    if node.op == "call_module":
        for p in lx.module_params(str(node.target)):
            lx.distrust(p, reason)
    return lx.give_up(values, reason)


def _note_width_read(lx: Lifter, v: Chan | Heads, dims: list[int], node: fx.Node) -> None:
    if any(d in channel_dims(v) for d in dims):
        lx.fix_width(vars_of(v), f"the width is read as a number at node {node.name}")


def _dims_read(idx: object, r: int) -> list[int]:
    if isinstance(idx, int):
        return [norm_dim(idx, r)]
    if isinstance(idx, slice):
        return list(range(r))[idx]
    return list(range(r))


def _by_untracked_tensor(lx: Lifter, idx: object) -> bool:
    """An index that is one tensor computed from no group (a buffer of positions)."""
    return isinstance(idx, fx.Node) and not isinstance(lx.env[idx], (Chan, Heads, Pieces, Items, ShapeOf)) \
        and isinstance(idx.meta.get("tensor_meta"), TensorMetadata)


def _all_slices(idx: object) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, slice) or i is Ellipsis for i in items)


def _index_tensor(lx: Lifter, node: fx.Node, v: Chan | Heads | Pieces, idx: object, r: int) -> Value:
    """Basic indexing: head and channel dims are taken whole (``:``), or a channel dim sliced with step 1 (the
    channels in the slice, cut out of their groups), or a piece taken out of ``Pieces`` by its index."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
        return lx.give_up([v], f"advanced indexing at node {node.name}")
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (r - consumed)
    items += [slice(None)] * (r - sum(1 for i in items if i is not None))
    src_items = [i for i in items if i is not None]
    where = src_items[v.dim]
    if isinstance(v, Pieces) and isinstance(where, int):  # one piece: its dims count the pieces' dim
        return _index_tensor(lx, node, v.parts[where], _taking(items, v.dim), r)
    part: tuple[int, int] | None = None
    if isinstance(v, Chan) and isinstance(where, slice) and where != slice(None):
        lo, hi, step = where.indices(v.width)
        piece = cut_channels(lx, v, lo, hi) if step == 1 and lo < hi else None
        if piece is None:
            return lx.give_up([v], f"indexing into the channel dim at node {node.name}")
        v = piece
    elif isinstance(v, Heads) and isinstance(where, slice) and where != slice(None):
        lo, hi, step = where.indices(v.size)
        if step != 1 or lo >= hi:
            return lx.give_up([v], f"indexing inside the heads at node {node.name}")
        part = (lo, hi)  # the same channels of every head (a rotary embedding's half)
    mapping, src, dst = {}, 0, 0
    for i in items:
        if i is None:
            dst += 1
            continue
        if isinstance(i, slice):
            if i == slice(None) or (isinstance(v, (Chan, Heads)) and src == v.dim):
                mapping[src] = dst
            dst += 1
        src += 1
    moved = remap_pieces(v, mapping) if isinstance(v, Pieces) else remap(v, mapping)
    if moved is None:
        return lx.give_up([v], f"indexing into the channel dim at node {node.name}")
    if part is not None:
        assert isinstance(moved, Heads)
        lx.fix_inner([moved.var], f"part of every head taken at node {node.name}")
        return HeadSlice(moved, *part)
    return moved


def _taking(items: list[object], d: int) -> tuple[object, ...]:
    """The index with the entry for source dim ``d`` replaced by ``0``: it takes the piece's only index."""
    out, src = [], 0
    for i in items:
        if i is not None:
            if src == d:
                i = 0
            src += 1
        out.append(i)
    return tuple(out)

