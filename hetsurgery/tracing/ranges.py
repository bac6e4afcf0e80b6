"""The interval each fx node's output lies in, propagated op by op (``NodeFacts.range``).

Only what can be proved is recorded: a parametric layer, a model input or an op no rule knows gives
``(-inf, inf)``; activations give their image (``Activation.image``); pooling and padding keep the hull of
their input's range and 0; moves and reshapes keep it; sums, differences and products combine intervals.

>>> from hetsurgery.ir import Range
>>> _product(Range(0, 2), Range(-1, 3))
Range(lo=-2, hi=6)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from hetsurgery.ir import Activation, OpKind, Range
from hetsurgery.ir.facts import ANY

_KEEP = frozenset({OpKind.FLATTEN, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.UNSQUEEZE, OpKind.GETITEM})
_ADD = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})
_SUB = frozenset({operator.sub, operator.isub, torch.sub, "sub", "sub_"})
_MUL = frozenset({operator.mul, operator.imul, torch.mul, "mul", "mul_"})
_SUM = frozenset({torch.sum, "sum"})
_SMOOTH_RESIZE = frozenset({"bicubic"})  # interpolation that overshoots its samples


def node_range(node: fx.Node, kind: OpKind, activation: Activation | None, ranges: Mapping[fx.Node, Range],
               modules: Mapping[str, nn.Module]) -> Range:
    """The range of ``node``'s output from its inputs' ranges (``ranges``)."""
    first = _range_of(node.args[0], ranges) if node.args else ANY
    if kind is OpKind.ELEMENTWISE:
        return activation.image(first) if activation is not None else ANY
    if kind in _KEEP:
        return first
    if kind is OpKind.SPATIAL:
        mode = getattr(modules.get(str(node.target)), "mode", None) if node.op == "call_module" else \
            node.kwargs.get("mode", node.args[3] if node.target is F.interpolate and len(node.args) > 3 else None)
        if mode in _SMOOTH_RESIZE:
            return ANY
        fill = _pad_value(node)
        return first.hull(Range(fill, fill))
    if kind is OpKind.CONCAT:
        given = node.args[0] if node.args else node.kwargs.get("tensors", ())
        parts = [_range_of(p, ranges) for p in (given if isinstance(given, (list, tuple)) else ())]
        out = parts[0] if parts else ANY
        for r in parts[1:]:
            out = out.hull(r)
        return out
    if kind is OpKind.SOFTMAX:
        is_log = (node.target in (F.log_softmax, torch.log_softmax, "log_softmax")
                  or (node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.LogSoftmax)))
        return Range(-math.inf, 0.0) if is_log else Range(0.0, 1.0)
    if kind is OpKind.REDUCE:
        if node.target in _SUM:
            return Range(0.0, math.inf) if first.nonneg else ANY
        return first  # mean, amax, amin stay inside the input's range
    if kind is OpKind.BINARY and len(node.args) >= 2:
        return _binary(node.target, first, _range_of(node.args[1], ranges))
    return ANY


def _range_of(arg: Any, ranges: Mapping[fx.Node, Range]) -> Range:
    if isinstance(arg, fx.Node):
        return ranges.get(arg, ANY)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool) and math.isfinite(arg):
        return Range(float(arg), float(arg))
    return ANY


def _binary(target: object, a: Range, b: Range) -> Range:
    if target in _ADD:
        return Range(a.lo + b.lo if math.isfinite(a.lo + b.lo) else -math.inf,
                     a.hi + b.hi if math.isfinite(a.hi + b.hi) else math.inf)
    if target in _SUB:
        return _binary(operator.add, a, Range(-b.hi, -b.lo))
    if target in _MUL:
        return _product(a, b)
    if target in (torch.maximum,):
        return Range(max(a.lo, b.lo), max(a.hi, b.hi))
    if target in (torch.minimum,):
        return Range(min(a.lo, b.lo), min(a.hi, b.hi))
    return ANY


def _product(a: Range, b: Range) -> Range:
    corners = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    if any(math.isnan(c) for c in corners):  # 0 * inf: nothing is known
        return ANY
    return Range(min(corners), max(corners))


def _pad_value(node: fx.Node) -> float:
    """The value padding brings in: F.pad's ``value`` (0 by default); 0 for pooling with zero padding."""
    if node.target is F.pad:
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
        return float(value) if isinstance(value, (int, float)) and value is not None else 0.0
    return 0.0
