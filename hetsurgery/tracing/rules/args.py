"""Reading an fx node's arguments and shapes inside a channel rule."""

from __future__ import annotations

from typing import Any

from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.shapes import NUMBER_META


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional argument ``index`` or keyword ``name`` of ``node`` (raw: nodes stay nodes)."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def number(a: Any) -> Any:
    """``a`` with nodes that computed a plain number (a size: ``x.shape[-1] // 2``) replaced by that number, inside
    slices too; anything else unchanged."""
    if isinstance(a, fx.Node):
        return a.meta.get(NUMBER_META, a)
    if isinstance(a, slice):
        return slice(number(a.start), number(a.stop), number(a.step))
    if isinstance(a, tuple):
        return tuple(number(x) for x in a)
    return a


def value(lx: Lifter, a: Any) -> Any:
    """The lifter value of an argument: nodes become ``Value``s, containers are mapped, literals stay."""
    if isinstance(a, fx.Node):
        return lx.env[a]
    if isinstance(a, (list, tuple)):
        return type(a)(value(lx, x) for x in a)
    return a


def shape(node: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-valued node, from ShapeProp's ``tensor_meta``."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def rank(node: Any) -> int:
    s = shape(node)
    return len(s) if s is not None else 0


def describe(node: fx.Node, lx: Lifter) -> str:
    """``module torch.nn.LSTM 'rnn' at node rnn`` / ``function torch.fft.fft2 at node fft2``."""
    if node.op == "call_module":
        mod = lx.modules[node.target]  # type: ignore[index]
        return f"module {type(mod).__module__}.{type(mod).__qualname__} {node.target!r} at node {node.name}"
    if node.op == "call_method":
        return f"method Tensor.{node.target} at node {node.name}"
    target = node.target
    qual = f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', target)}".lstrip(".")
    return f"function {qual} at node {node.name}"


def norm_dim(d: int, r: int) -> int:
    return d + r if d < 0 else d
