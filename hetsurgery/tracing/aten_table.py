"""The aten overloads ``torch.export`` writes, and the torch-level call each one is written back as.

A training-IR graph calls ``torch.ops.aten.view.default(x, [b, s, -1, 8])`` where torch.fx would have
recorded ``x.view(b, s, -1, 8)``. ``ATEN`` maps each overload *object* onto a ``Rewrite``: a function
(``Function(torch.cat, ("tensors", "dim"))``), a tensor method (``Method("view", ("self", "size"))``),
indexing (``slice``, ``select``, ``index`` become ``x[...]``), the argument itself (``alias``), or nothing
(the checks export inserts). Arguments are addressed by their names in the overload's schema, so a rewrite
can reorder them; an argument a rewrite does not pass must hold its schema default, or be one of
``IGNORED`` (memory layout, pinning: nothing a value depends on), or the rewrite declines and the aten call
stays as it is (it runs; the channel rules then name it as an op they do not know).

>>> import torch
>>> from torch import fx
>>> g = fx.Graph()
>>> x = g.placeholder("x")
>>> aten = torch.ops.aten
>>> out = ATEN[aten.mean.dim].emit(g, bind(aten.mean.dim, (x, [-1], True), {}), x, aten.mean.dim)
>>> out.op, out.target.__name__, out.args
('call_function', 'mean', (x, [-1], True))
>>> ATEN[aten.add.Tensor].emit(g, bind(aten.add.Tensor, (x, x), {}), x, aten.add.Tensor).target
<built-in function add>
>>> out = ATEN[aten.add.Tensor].emit(g, bind(aten.add.Tensor, (x, x), {"alpha": 2}), x, aten.add.Tensor)
>>> out.target.__module__, out.kwargs
('torch', {'alpha': 2})
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

aten = torch.ops.aten

Bound = Mapping[str, Any]  # an aten call's arguments by schema name, defaults filled in
_LAST = 2**63 - 1  # ``x[a:]`` in the aten graph: slice(..., end=INT64_MAX)
# arguments whose value no output value depends on (memory layout, pinning, cudnn, gradient-only flags)
IGNORED = frozenset({"memory_format", "non_blocking", "pin_memory", "implicit", "cudnn_enable", "cudnn_enabled",
                     "scale_grad_by_freq", "sparse", "sparse_grad", "output_size"})


def bind(op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's arguments by schema name, with the defaults of those not given."""
    out: dict[str, Any] = {}
    for i, a in enumerate(op._schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def at_default(op: torch._ops.OpOverload, bound: Bound, name: str) -> bool:
    """Whether argument ``name`` holds its schema default (a layout of ``strided`` counts as the default)."""
    value = bound.get(name)
    if isinstance(value, (fx.Node, torch.SymInt)):
        return False
    if name == "layout" and value in (None, torch.strided):
        return True
    arg = next(a for a in op._schema.arguments if a.name == name)
    return arg.has_default_value() and _equal(arg.default_value, value)


def _equal(a: Any, b: Any) -> bool:
    """Equal schema values (python scalars, dtypes, devices, strings, lists of them)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return not isinstance(b, (list, tuple, torch.Tensor)) and bool(a == b)


class Rewrite(abc.ABC):
    """How one aten overload is written at torch level."""

    @abc.abstractmethod
    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        """The new node (or value) for the call of ``op`` that the exported graph's ``node`` makes (its
        metadata gives the argument shapes); ``None`` when the rewrite declines."""


@dataclass(frozen=True)
class _Call(Rewrite):
    """A call that passes the arguments ``args`` positionally (trailing defaults left out) and ``kwargs`` by
    keyword (when not at their default); ``fixed`` are keywords added as they are."""

    args: tuple[str, ...] = ("self",)
    kwargs: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def arguments(self, bound: Bound, op: torch._ops.OpOverload) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        used = set(self.args) | set(self.kwargs)
        if any(n not in used and n not in IGNORED and not at_default(op, bound, n) for n in bound):
            return None  # an argument this rewrite drops holds a value that matters
        names = list(self.args)
        while names and names[-1] in bound and at_default(op, bound, names[-1]):
            names.pop()
        args = tuple(bound.get(n) for n in names)
        kwargs = {n: bound[n] for n in self.kwargs if n in bound and not at_default(op, bound, n)}
        return args, {**kwargs, **self.fixed}


@dataclass(frozen=True)
class Function(_Call):
    """``target(*args, **kwargs)``: a torch, ``torch.nn.functional`` or ``operator`` function."""

    target: Callable[..., Any] = torch.clone

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        given = self.arguments(bound, op)
        return None if given is None else graph.call_function(self.target, *given)


@dataclass(frozen=True)
class Method(_Call):
    """``self.name(*args, **kwargs)``: a tensor method (``args`` starts with the tensor)."""

    name: str = "clone"

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        given = self.arguments(bound, op)
        return None if given is None else graph.call_method(self.name, *given)


def method(name: str, *args: str, kwargs: tuple[str, ...] = (), **fixed: Any) -> Method:
    return Method(("self", *args), kwargs, MappingProxyType(fixed), name=name)


def function(target: Callable[..., Any], *args: str, kwargs: tuple[str, ...] = (), **fixed: Any) -> Function:
    return Function(args or ("self",), kwargs, MappingProxyType(fixed), target=target)


@dataclass(frozen=True)
class Choice(Rewrite):
    """The first of ``options`` that accepts the call (``a + b``, else ``torch.add(a, b, alpha=2)``)."""

    options: tuple[Rewrite, ...]

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        for option in self.options:
            out = option.emit(graph, bound, node, op)
            if out is not None:
                return out
        return None


@dataclass(frozen=True)
class Custom(Rewrite):
    """A rewrite that needs more than renaming: ``build(graph, bound, shape)``, ``shape`` the first argument's
    (its dims ``SymInt`` where they are dynamic)."""

    build: Callable[[fx.Graph, Bound, tuple[Any, ...]], Any]

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        return self.build(graph, bound, input_shape(node))


@dataclass(frozen=True)
class Same(Rewrite):
    """The call's value is its first argument (``alias``: a view of the whole tensor)."""

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        return bound["self"]


@dataclass(frozen=True)
class Drop(Rewrite):
    """A check export inserts (dtype asserts, range constraints): nothing in the model reads it."""

    def emit(self, graph: fx.Graph, bound: Bound, node: fx.Node, op: torch._ops.OpOverload) -> Any:
        return None


def static_int(size: Any) -> int | None:
    """A dim's size when it is a number (an int, or a ``SymInt`` export pinned to one); ``None`` when dynamic."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    return node.maybe_as_int() if node is not None else None


def input_shape(node: fx.Node) -> tuple[Any, ...]:
    """The shape of the call's first tensor argument (``()`` when none is a tensor)."""
    for a in node.all_input_nodes:
        val = a.meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(val.shape)
    return ()


def _norm(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _slice(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> Any:
    """``slice(x, dim, start, end, step)`` -> ``x[:, start:end:step]`` (``x`` itself for ``x[:]``)."""
    start = None if b.get("start") in (None, 0) else b["start"]
    end = None if isinstance(b.get("end"), int) and b["end"] >= _LAST else b.get("end")
    step = None if b.get("step", 1) == 1 else b["step"]
    if (start, end, step) == (None, None, None):
        return b["self"]
    index = (*(slice(None),) * _norm(b.get("dim", 0), len(shape)), slice(start, end, step))
    return graph.call_function(operator.getitem, (b["self"], index))


def _select(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> fx.Node:
    """``select(x, dim, i)`` -> ``x[:, i]``."""
    index = (*(slice(None),) * _norm(b["dim"], len(shape)), b["index"])
    return graph.call_function(operator.getitem, (b["self"], index))


def _unflatten(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> fx.Node:
    """``unflatten(x, dim, sizes)`` -> ``x.view(n, l, *sizes)``, a dynamic dim read as ``x.size(d)``."""
    d = _norm(b["dim"], len(shape))
    dims = [static_int(s) if static_int(s) is not None else graph.call_method("size", (b["self"], i))
            for i, s in enumerate(shape) if i != d]
    return graph.call_method("view", (b["self"], [*dims[:d], *b["sizes"], *dims[d:]]))


def _index(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> fx.Node:
    """``index(x, [None, i])`` -> ``x[:, i]`` (aten's ``None`` takes a dim whole)."""
    items = tuple(slice(None) if i is None else i for i in b["indices"])
    return graph.call_function(operator.getitem, (b["self"], items[0] if len(items) == 1 else items))


def _einsum(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> fx.Node | None:
    return graph.call_function(torch.einsum, (b["equation"], *b["tensors"])) if b.get("path") is None else None


def _embedding(graph: fx.Graph, b: Bound, shape: tuple[Any, ...]) -> fx.Node:
    """``embedding(weight, indices, padding_idx)`` -> ``F.embedding(indices, weight, padding_idx)``."""
    pad = b.get("padding_idx", -1)
    return graph.call_function(F.embedding, (b["indices"], b["weight"]) + (() if pad == -1 else (pad,)))


def _softmax(target: Callable[..., Any]) -> Custom:
    """``_softmax(x, dim, half_to_float=False)`` -> ``torch.softmax(x, dim)``."""
    return Custom(lambda g, b, s: None if b["half_to_float"] else g.call_function(target, (b["self"], b["dim"])))


_SIZES = ("size",)
_TO = ("dtype", "device", "copy")
_LAYER_NORM = function(F.layer_norm, "input", "normalized_shape", "weight", "bias", "eps")


def _binary(plain: Callable[..., Any], scaled: Callable[..., Any]) -> Choice:
    return Choice((function(plain, "self", "other"), function(scaled, "self", "other", kwargs=("alpha",))))


_CONSTANT = ("dtype", "device")  # tensor factories: the layout and pinning are dropped (IGNORED)

ATEN: Mapping[torch._ops.OpOverload, Rewrite] = MappingProxyType({
    # views and shapes
    aten.view.default: method("view", *_SIZES), aten._unsafe_view.default: method("reshape", *_SIZES),
    aten.reshape.default: method("reshape", "shape"), aten.transpose.int: method("transpose", "dim0", "dim1"),
    aten.permute.default: method("permute", "dims"), aten.t.default: method("t"),
    aten.expand.default: method("expand", *_SIZES), aten.unsqueeze.default: method("unsqueeze", "dim"),
    aten.squeeze.default: method("squeeze"), aten.squeeze.dim: method("squeeze", "dim"),
    aten.squeeze.dims: method("squeeze", "dim"), aten.flatten.using_ints: function(torch.flatten, "self", "start_dim", "end_dim"),
    aten.split.Tensor: method("split", "split_size", "dim"), aten.split_with_sizes.default: method("split", "split_sizes", "dim"),
    aten.chunk.default: method("chunk", "chunks", "dim"), aten.unbind.int: function(torch.unbind, "self", "dim"),
    aten.narrow.default: method("narrow", "dim", "start", "length"), aten.unflatten.int: Custom(_unflatten),
    aten.slice.Tensor: Custom(_slice), aten.select.int: Custom(_select), aten.index.Tensor: Custom(_index),
    aten.cat.default: function(torch.cat, "tensors", "dim"), aten.stack.default: function(torch.stack, "tensors", "dim"),
    aten.sym_size.int: method("size", "dim"), aten.repeat.default: method("repeat", "repeats"),
    aten.repeat_interleave.self_int: method("repeat_interleave", "repeats", "dim"),
    # copies, casts, aliases; checks
    aten.contiguous.default: method("contiguous"), aten.clone.default: method("clone"),
    aten.alias.default: Same(), aten.detach.default: method("detach"), aten.detach_.default: method("detach"),
    aten.lift_fresh_copy.default: method("clone"),
    aten.to.dtype: method("to", "dtype", kwargs=("copy",)), aten.to.device: method("to", "device", "dtype", kwargs=("copy",)),
    aten.to.dtype_layout: Method(("self",), _TO, name="to"), aten.to.other: method("to", "other", kwargs=("copy",)),
    aten._to_copy.default: Method(("self",), _CONSTANT, MappingProxyType({"copy": True}), name="to"),
    aten.type_as.default: method("type_as", "other"),
    **dict.fromkeys([aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range.default,
                     aten.sym_constrain_range_for_size.default, aten._assert_async.msg, aten._assert_async.default],
                    Drop()),
    # arithmetic
    aten.add.Tensor: _binary(operator.add, torch.add), aten.add.Scalar: _binary(operator.add, torch.add),
    aten.sub.Tensor: _binary(operator.sub, torch.sub), aten.sub.Scalar: _binary(operator.sub, torch.sub),
    aten.rsub.Scalar: Choice((function(operator.sub, "other", "self"), function(torch.rsub, "self", "other", kwargs=("alpha",)))),
    aten.mul.Tensor: function(operator.mul, "self", "other"), aten.mul.Scalar: function(operator.mul, "self", "other"),
    aten.div.Tensor: function(operator.truediv, "self", "other"), aten.div.Scalar: function(operator.truediv, "self", "other"),
    aten.div.Tensor_mode: function(torch.div, "self", "other", kwargs=("rounding_mode",)),
    aten.floor_divide.default: function(operator.floordiv, "self", "other"),
    aten.add_.Tensor: method("add_", "other", kwargs=("alpha",)), aten.mul_.Tensor: method("mul_", "other"),
    aten.neg.default: function(operator.neg), aten.pow.Tensor_Scalar: function(torch.pow, "self", "exponent"),
    aten.pow.Tensor_Tensor: function(torch.pow, "self", "exponent"), aten.pow.Scalar: function(torch.pow, "self", "exponent"),
    **{getattr(aten, n).default: function(getattr(torch, n)) for n in (
        "rsqrt", "sqrt", "exp", "log", "cos", "sin", "abs", "tanh", "sigmoid", "relu", "erf", "reciprocal", "square",
        "logical_not", "floor", "ceil", "round", "sign")},
    aten.clamp.default: function(torch.clamp, "self", "min", "max"), aten.clamp_min.default: function(torch.clamp_min, "self", "min"),
    aten.where.self: function(torch.where, "condition", "self", "other"),
    aten.where.ScalarOther: function(torch.where, "condition", "self", "other"),
    aten.where.ScalarSelf: function(torch.where, "condition", "self", "other"),
    aten.masked_fill.Scalar: method("masked_fill", "mask", "value"), aten.masked_fill.Tensor: method("masked_fill", "mask", "value"),
    aten.maximum.default: function(torch.maximum, "self", "other"), aten.minimum.default: function(torch.minimum, "self", "other"),
    aten.max.other: function(torch.max, "self", "other"), aten.min.other: function(torch.min, "self", "other"),
    **{getattr(aten, n).Tensor: function(f, "self", "other") for n, f in (
        ("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt), ("le", operator.le), ("gt", operator.gt),
        ("ge", operator.ge), ("__and__", operator.and_), ("__or__", operator.or_))},
    **{getattr(aten, n).Scalar: function(f, "self", "other") for n, f in (
        ("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt), ("le", operator.le), ("gt", operator.gt),
        ("ge", operator.ge))},
    aten.bitwise_not.default: function(operator.invert),
    # activations, dropout, softmax
    aten.silu.default: function(F.silu), aten.gelu.default: function(F.gelu, kwargs=("approximate",)),
    aten.relu_.default: function(torch.relu_), aten.hardtanh.default: function(F.hardtanh, "self", "min_val", "max_val"),
    aten.leaky_relu.default: function(F.leaky_relu, "self", "negative_slope"), aten.elu.default: function(F.elu, "self", "alpha"),
    aten.hardswish.default: function(F.hardswish), aten.hardsigmoid.default: function(F.hardsigmoid),
    aten.mish.default: function(F.mish), aten.softplus.default: function(F.softplus, "self", "beta", "threshold"),
    aten.dropout.default: function(F.dropout, "input", "p", "train"),
    aten.softmax.int: function(torch.softmax, "self", "dim", kwargs=("dtype",)), aten._softmax.default: _softmax(torch.softmax),
    aten.log_softmax.int: function(torch.log_softmax, "self", "dim", kwargs=("dtype",)),
    aten._log_softmax.default: _softmax(torch.log_softmax),
    # reductions
    aten.mean.dim: function(torch.mean, "self", "dim", "keepdim", kwargs=("dtype",)),
    aten.mean.default: function(torch.mean, kwargs=("dtype",)),
    aten.sum.dim_IntList: function(torch.sum, "self", "dim", "keepdim", kwargs=("dtype",)),
    aten.sum.default: function(torch.sum, kwargs=("dtype",)),
    aten.amax.default: function(torch.amax, "self", "dim", "keepdim"), aten.amin.default: function(torch.amin, "self", "dim", "keepdim"),
    aten.argmax.default: function(torch.argmax, "self", "dim", "keepdim"),
    aten.cumsum.default: function(torch.cumsum, "self", "dim", kwargs=("dtype",)),
    # products, attention, layers in functional form (``export_layers`` makes module calls of those it can)
    aten.matmul.default: function(torch.matmul, "self", "other"), aten.bmm.default: function(torch.bmm, "self", "mat2"),
    aten.mm.default: function(torch.matmul, "self", "mat2"),
    aten.addmm.default: function(torch.addmm, "self", "mat1", "mat2", kwargs=("beta", "alpha")),
    aten.baddbmm.default: function(torch.baddbmm, "self", "batch1", "batch2", kwargs=("beta", "alpha")),
    aten.einsum.default: Custom(_einsum),
    aten.scaled_dot_product_attention.default: function(
        F.scaled_dot_product_attention, "query", "key", "value", "attn_mask", "dropout_p", "is_causal",
        kwargs=("scale", "enable_gqa")),
    aten.linear.default: function(F.linear, "input", "weight", "bias"),
    aten.layer_norm.default: _LAYER_NORM,
    aten.rms_norm.default: function(F.rms_norm, "input", "normalized_shape", "weight", "eps"),
    aten.group_norm.default: function(F.group_norm, "input", "num_groups", "weight", "bias", "eps"),
    aten.batch_norm.default: function(F.batch_norm, "input", "running_mean", "running_var", "weight", "bias", "training",
                                      "momentum", "eps"),
    aten.embedding.default: Custom(_embedding),
    **{getattr(aten, f"conv{k}d").default: function(getattr(F, f"conv{k}d"), "input", "weight", "bias", "stride", "padding",
                                                    "dilation", "groups") for k in (1, 2, 3)},
    **{getattr(aten, f"conv{k}d").padding: function(getattr(F, f"conv{k}d"), "input", "weight", "bias", "stride", "padding",
                                                    "dilation", "groups") for k in (1, 2, 3)},
    aten.max_pool2d.default: function(F.max_pool2d, "self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    aten.avg_pool2d.default: function(F.avg_pool2d, "self", "kernel_size", "stride", "padding", "ceil_mode",
                                      "count_include_pad", "divisor_override"),
    aten.adaptive_avg_pool2d.default: function(F.adaptive_avg_pool2d, "self", "output_size"),
    aten.adaptive_avg_pool1d.default: function(F.adaptive_avg_pool1d, "self", "output_size"),
    # constants: tensors made from sizes, never from a channel
    aten.arange.default: function(torch.arange, "end", kwargs=_CONSTANT),
    aten.arange.start: function(torch.arange, "start", "end", kwargs=_CONSTANT),
    aten.arange.start_step: function(torch.arange, "start", "end", "step", kwargs=_CONSTANT),
    aten.new_ones.default: method("new_ones", *_SIZES, kwargs=_CONSTANT),
    aten.new_zeros.default: method("new_zeros", *_SIZES, kwargs=_CONSTANT),
    aten.new_full.default: method("new_full", *_SIZES, "fill_value", kwargs=_CONSTANT),
    aten.zeros.default: function(torch.zeros, *_SIZES, kwargs=_CONSTANT),
    aten.ones.default: function(torch.ones, *_SIZES, kwargs=_CONSTANT),
    aten.full.default: function(torch.full, *_SIZES, "fill_value", kwargs=_CONSTANT),
    aten.full_like.default: function(torch.full_like, "self", "fill_value", kwargs=_CONSTANT),
    aten.zeros_like.default: function(torch.zeros_like, kwargs=_CONSTANT),
    aten.ones_like.default: function(torch.ones_like, kwargs=_CONSTANT),
    aten.scalar_tensor.default: function(torch.scalar_tensor, "s", kwargs=_CONSTANT),
    aten.gather.default: function(torch.gather, "self", "dim", "index"),
    aten.tril.default: function(torch.tril, "self", "diagonal"), aten.triu.default: function(torch.triu, "self", "diagonal"),
    aten.item.default: method("item"),
})
