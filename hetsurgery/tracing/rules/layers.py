"""Rules for the parametric layers: Linear (and F.linear), Conv, BatchNorm, LayerNorm/RMSNorm (and their
functional forms), GroupNorm, Embedding."""

from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F
from torch import fx, nn

from hetsurgery.ir import Role, Slot
from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import arg, rank, value
from hetsurgery.tracing.values import MODEL_INPUT, Chan, Free, Param, Seg, Value


def _param(lx: Lifter, node: fx.Node, attr: str) -> str | None:
    name = f"{node.target}.{attr}"
    return name if name in lx.tensors else None


def _input(node: fx.Node) -> fx.Node:
    src = node.args[0]
    assert isinstance(src, fx.Node)
    return src


def _read_input(lx: Lifter, node: fx.Node, x: object, weight: str, dim: int, what: str) -> None:
    """``weight``'s axis ``dim`` reads ``x``: consumer slots, or a fixed axis for the model input."""
    src = node.args[0]
    assert isinstance(src, fx.Node)
    if isinstance(x, Chan) and x.width == lx.tensors[weight].shape[dim]:
        lx.consume(x, src, weight, dim)
    elif isinstance(x, Free):
        if x.why == MODEL_INPUT:
            lx.fix_axes(weight, [dim], f"the model-input feature axis read at node {node.name}")
        else:
            lx.note_axis(weight, dim, f"node {node.name} reads {src.name}, the {x.why}")
    else:
        lx.give_up([x], f"{what} reads its input along a dim that does not carry channels (node {node.name})")


def _produce(lx: Lifter, node: fx.Node, size: int, params: list[str | None], dim_out: int) -> Chan:
    v = lx.new_var(size, node)
    for p in params:
        if p is not None:
            lx.slot(v, Slot(p, 0, role=Role.PRODUCE))
    out = Chan(dim_out, (Seg(v, size),))
    lx.observe(out, node, producer=True)
    return out


def linear(lx: Lifter, node: fx.Node) -> Value:
    mod = lx.modules[str(node.target)]
    x = value(lx, node.args[0])
    w, b = f"{node.target}.weight", _param(lx, node, "bias")
    r = rank(node.args[0])
    if isinstance(x, Chan) and x.dim != r - 1:
        x = lx.give_up([x], f"nn.Linear over a non-channel dim at node {node.name}")
    _read_input(lx, node, x, w, 1, "nn.Linear")
    return _produce(lx, node, mod.out_features, [w, b], rank(node) - 1)


def conv(lx: Lifter, node: fx.Node) -> Value:
    mod = lx.modules[str(node.target)]
    x = value(lx, node.args[0])
    w, b = f"{node.target}.weight", _param(lx, node, "bias")
    taps = lx.tensors[w].dim() - 2
    lx.fix_axes(w, range(2, 2 + taps), f"a kernel axis of node {node.name}")
    cdim = rank(node.args[0]) - taps - 1  # (N, C, *taps) batched, (C, *taps) unbatched
    g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
    if isinstance(x, Chan) and x.dim != cdim:
        x = lx.give_up([x], f"convolution over a non-channel dim at node {node.name}")
    if g == 1:
        _read_input(lx, node, x, w, 1, type(mod).__name__)
        return _produce(lx, node, cout, [w, b], cdim)
    if g == cin and cout % cin == 0 and isinstance(x, Chan):
        # depthwise: output channel c*m + j reads input channel c only
        m = cout // cin
        out = Chan(cdim, tuple(replace(s, inner=s.inner * m) for s in x.segs),
                   None if x.at is None else tuple(at * m for at in x.at))
        lx.add_slots(out, w, 0, Role.PRODUCE)
        lx.add_slots(out, b, 0, Role.PRODUCE)
        return out
    if isinstance(x, Chan) and len(x.segs) == 1 and x.packed and (cin // g) % x.segs[0].inner == 0:
        seg = x.segs[0]
        lx.constrain_blocks(seg.var, cin // g // seg.inner)
        lx.slot(seg.var, Slot(w, 1, inner=seg.inner, role=Role.CONSUME, chunks=g))
        lx.observe(x, _input(node))
    elif not isinstance(x, Free):
        lx.give_up([x], f"grouped convolution over concatenated channels at node {node.name}")
    out = _produce(lx, node, cout, [w, b], cdim)
    lx.constrain_blocks(out.segs[0].var, cout // g)  # output rows stay inside their group
    return out


def batch_norm(lx: Lifter, node: fx.Node) -> Value:
    """BatchNorm always reads (N, C, *): torch has no unbatched form (a 2-D input is (N, C))."""
    x = value(lx, node.args[0])
    names = [_param(lx, node, a) for a in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(x, Chan) and x.dim == 1:
        for p in names:
            lx.add_slots(x, p, 0, Role.PRODUCE)
        return x
    if isinstance(x, Free):
        return x
    return lx.give_up([x], f"BatchNorm over a non-channel dim at node {node.name}")


def layer_norm(lx: Lifter, node: fx.Node) -> Value:
    """nn.LayerNorm, nn.RMSNorm, F.layer_norm and F.rms_norm: normalise over the last ``len(normalized_shape)`` dims."""
    x = value(lx, node.args[0])
    if node.op == "call_module":
        mod: nn.LayerNorm | nn.RMSNorm = lx.modules[str(node.target)]
        w, b, k, kind = _param(lx, node, "weight"), _param(lx, node, "bias"), len(mod.normalized_shape), \
            type(mod).__name__
    else:
        given = [value(lx, arg(node, i, name)) for i, name in ((2, "weight"), (3, "bias"))]
        if node.target is F.rms_norm:
            given[1] = None  # its third argument is eps
        if any(p is not None and not _whole_param(lx, p) for p in given):
            return lx.give_up([x, *given], f"a normalisation whose affine tensors are computed at node {node.name}")
        w, b = (p.name if isinstance(p, Param) else None for p in given)
        shape = arg(node, 1, "normalized_shape")
        k = len(shape) if isinstance(shape, (list, tuple)) else 1
        kind = getattr(node.target, "__name__", "layer_norm")
    r = rank(node.args[0])
    if not isinstance(x, Chan):
        return x if isinstance(x, Free) else lx.give_up([x], f"{kind} at node {node.name}")
    normalised = range(r - k, r)
    why = f"a normalised axis without channels at node {node.name}"
    if x.dim not in normalised:
        for p in (w, b):
            lx.fix_axes(p, range(k), why)
        return x
    pdim = x.dim - (r - k)
    for p in (w, b):
        lx.add_slots(x, p, pdim, Role.PRODUCE)
        lx.fix_axes(p, [d for d in range(k) if d != pdim], why)
    vs = [s.var for s in x.segs]
    lx.block_pad(vs, f"{kind} at node {node.name} normalises over the channels")
    if w is None or k != 1:
        lx.block_zip(vs, f"{kind} at node {node.name} has a normalized_shape no parameter spells")
    return x


def _whole_param(lx: Lifter, v: object) -> bool:
    """A parameter or buffer read as it is (not a computed or indexed part of one)."""
    return isinstance(v, Param) and tuple(lx.tensors[v.name].shape) == v.shape


def functional_linear(lx: Lifter, node: fx.Node) -> Value:
    """``F.linear(x, weight, bias)`` with ``weight`` and ``bias`` read from the module (not computed)."""
    x = value(lx, node.args[0])
    weight, bias = value(lx, arg(node, 1, "weight")), value(lx, arg(node, 2, "bias"))
    if not _whole_param(lx, weight) or (bias is not None and not _whole_param(lx, bias)):
        return lx.give_up([x, weight, bias], f"F.linear with a weight that is not a module's tensor at node {node.name}")
    assert isinstance(weight, Param)
    r = rank(node.args[0])
    if isinstance(x, Chan) and x.dim != r - 1:
        x = lx.give_up([x], f"F.linear over a non-channel dim at node {node.name}")
    _read_input(lx, node, x, weight.name, 1, "F.linear")
    return _produce(lx, node, weight.shape[0], [weight.name, bias.name if isinstance(bias, Param) else None],
                    rank(node) - 1)


def group_norm(lx: Lifter, node: fx.Node) -> Value:
    mod: nn.GroupNorm = lx.modules[str(node.target)]
    x = value(lx, node.args[0])
    if isinstance(x, Free):
        return x
    if not (isinstance(x, Chan) and x.dim == 1 and len(x.segs) == 1 and x.segs[0].inner == 1 and x.packed):
        return lx.give_up([x], f"GroupNorm over concatenated or non-channel dims at node {node.name}")
    var = x.segs[0].var
    lx.constrain_blocks(var, mod.num_channels // mod.num_groups)
    for p in (_param(lx, node, "weight"), _param(lx, node, "bias")):
        lx.add_slots(x, p, 0, Role.PRODUCE)
    lx.fix_width([var], f"GroupNorm at node {node.name} normalises over groups of channels")
    return x


def embedding(lx: Lifter, node: fx.Node) -> Value:
    mod: nn.Embedding = lx.modules[str(node.target)]
    x = value(lx, node.args[0])
    w = f"{node.target}.weight"
    if not isinstance(x, Free):
        lx.give_up([x], f"nn.Embedding indexed by a tracked tensor at node {node.name}")
    lx.fix_axes(w, [0], f"the vocabulary axis of nn.Embedding at node {node.name}")
    v = lx.new_var(mod.embedding_dim, node)
    lx.slot(v, Slot(w, 1, role=Role.PRODUCE))
    out = Chan(rank(node) - 1, (Seg(v, mod.embedding_dim),))
    lx.observe(out, node, producer=True)
    return out


def addmm(lx: Lifter, node: fx.Node) -> Value:
    """``torch.addmm(bias, x, W)`` = ``x @ W + bias`` with ``W`` stored (in, out): GPT-2's ``Conv1D``. ``x``'s
    channels are read by ``W``'s rows, a new group is written to its columns and the bias."""
    b_src, x_src, w_src = arg(node, 0, "input"), arg(node, 1, "mat1"), arg(node, 2, "mat2")
    bias, x, w = value(lx, b_src), value(lx, x_src), value(lx, w_src)
    if not (isinstance(w, Param) and isinstance(bias, Param) and len(w.shape) == 2 and bias.shape == w.shape[1:]
            and arg(node, 3, "beta", 1) == 1 and arg(node, 4, "alpha", 1) == 1):
        return lx.give_up([bias, x, w], f"addmm other than x @ W + bias with parameters at node {node.name}")
    if isinstance(x, Chan) and x.dim != 1:
        x = lx.give_up([x], f"addmm over a non-channel dim at node {node.name}")
    if isinstance(x, Chan) and x.width == w.shape[0]:
        lx.consume(x, x_src, w.name, 0)
    elif isinstance(x, Free) and x.why == MODEL_INPUT:
        lx.fix_axes(w.name, [0], f"the model-input feature axis read at node {node.name}")
    elif not isinstance(x, Free):
        lx.give_up([x], f"addmm reads its input along a dim that does not carry channels (node {node.name})")
    v = lx.new_var(w.shape[1], node)
    lx.slot(v, Slot(w.name, 1, role=Role.PRODUCE))
    lx.slot(v, Slot(bias.name, 0, role=Role.PRODUCE))
    out = Chan(1, (Seg(v, w.shape[1]),))
    lx.observe(out, node, producer=True)
    return out
