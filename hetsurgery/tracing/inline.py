"""Inline the Python functions fx kept whole (``torch.fx.wrap``): their bodies, traced with example values.

Libraries wrap a function when fx cannot trace it, mostly because it branches on sizes: torchvision's
``stochastic_depth`` (the identity at eval), Swin's ``shifted_window_attention`` (pads, rolls and masks
only when the feature map needs it). As one opaque call such a function freezes every group it touches.
``inline_wrapped`` traces each such call again with a tracer whose proxies carry the values the call had
on the example inputs: a branch on sizes takes the branch the example takes; a branch on tensor *data*
stops the tracing (the call stays whole). Sizes stay symbolic in the graph, so the batch size may change.
The inlined graph must give the original's outputs on (the first two samples of) the example inputs and on
them repeated twice; otherwise the original graph is kept.

>>> import torch
>>> from torch import fx
>>> def drop_path(x, p: float, training: bool):
...     if not training or p == 0.0:
...         return x
...     keep = torch.empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(1 - p)
...     return x * keep / (1 - p)
>>> class Block(torch.nn.Module):
...     def forward(self, x):
...         return x + drop_path(torch.relu(x), 0.1, self.training)
>>> tracer = fx.Tracer(autowrap_functions=(drop_path,))   # as torch.fx.wrap("drop_path") would
>>> gm = fx.GraphModule(Block(), tracer.trace(Block().eval()))
>>> [n.op for n in gm.graph.nodes]
['placeholder', 'call_function', 'call_function', 'call_function', 'output']
>>> [n.op for n in inline_wrapped(gm, (torch.randn(2, 3),)).graph.nodes]
['placeholder', 'call_function', 'call_function', 'output']
"""

from __future__ import annotations

import operator
import types
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from hetsurgery.ir import OpKind
from hetsurgery.tracing.classify import classify
from hetsurgery.tracing.shapes import Arguments, propagate_shapes

_SIZES = frozenset({"shape", "ndim", "dtype", "device"})  # attributes that read no tensor data
_SIZE_METHODS = frozenset({"size", "dim", "numel"})


class _Stop(Exception):
    """The call cannot be traced with values (data-dependent control flow, a new tensor constant)."""


class _ValueProxy(fx.Proxy):
    """A proxy whose tracer knows the value it had on the example inputs."""

    tracer: _ValueTracer

    def __getattr__(self, k: str) -> _Attr:
        return _Attr(self, k)

    def __len__(self) -> int:
        return len(self.tracer.static_value(self))

    def __index__(self) -> int:
        return operator.index(self.tracer.static_value(self))

    def __setitem__(self, key: Any, item: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, item), {})


class _Attr(fx.proxy.Attribute, _ValueProxy):
    """``x.shape``, ``x.view``: fx's lazy attribute, with the value proxy's behaviour."""


class _ValueTracer(fx.Tracer):
    """Records torch calls on proxies and runs each on the values it had, to answer questions about sizes."""

    def __init__(self, root: fx.GraphModule, prefix: str) -> None:
        super().__init__()
        self.root = root
        self.prefix = prefix  # the inlined call's name: its nodes are named after it
        self.graph = fx.Graph()
        self.tensor_attrs = {t: name for name, t in [*root.named_parameters(), *root.named_buffers()]}
        self.values: dict[fx.Node, Any] = {}
        self.static: set[fx.Node] = set()  # computed from sizes and constants only, never from tensor data

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def placeholder(self, value: Any) -> fx.Proxy:
        p = self.create_proxy("placeholder", f"arg{len(self.values)}", (), {})
        self.values[p.node] = value
        return p

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any = None,
                     proxy_factory_fn: Callable[[fx.Node], fx.Proxy] | None = None) -> fx.Proxy:
        if kind != "placeholder":
            name = f"{self.prefix}_{name or (target if isinstance(target, str) else target.__name__)}"
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = p.node
        if kind == "placeholder":
            return p
        a, kw = map_arg((node.args, node.kwargs), lambda n: self.values[n])
        if kind == "call_function":
            result = target(*a, **kw)
        elif kind == "call_method":
            result = getattr(a[0], target)(*a[1:], **kw)
        elif kind == "get_attr":
            result = _fetch(self.root, target)
        else:
            raise _Stop(f"a {kind} inside the function")
        self.values[node] = result
        reads_sizes = (target is getattr and args[1] in _SIZES) or (kind == "call_method" and target in _SIZE_METHODS)
        inputs_static = all(n in self.static for n in node.all_input_nodes)
        if reads_sizes or (inputs_static and not isinstance(result, torch.Tensor)):
            self.static.add(node)
        return p

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor) and not isinstance(a, fx.Proxy) and a not in self.tensor_attrs:
            raise _Stop("the function makes a tensor constant")
        return super().create_arg(a)

    def static_value(self, p: fx.Proxy) -> Any:
        if p.node not in self.static:
            raise _Stop(f"control flow on tensor data at {p.node.name}")
        return self.values[p.node]

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.static_value(obj))

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter([cast(Any, obj)[i] for i in range(len(self.static_value(obj)))])


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def inline_wrapped(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], name: str = "model") -> fx.GraphModule:
    """``gm`` with every call of a wrapped Python function replaced by its traced body (``gm`` itself when
    there is none, or when the inlined graph does not compute what ``gm`` computes)."""
    modules = dict(gm.named_modules())

    def wrapped(node: fx.Node) -> bool:
        return node.op == "call_function" and isinstance(node.target, types.FunctionType) \
            and classify(node, modules) is OpKind.UNKNOWN

    if not any(wrapped(n) for n in gm.graph.nodes):
        return gm
    inputs = tuple(x[:2] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)  # two samples do
    recorded = propagate_shapes(gm, inputs, name, keep=wrapped)
    bodies = {node: body for node, args in recorded.items() if (body := _body(gm, node, args)) is not None}
    if not bodies:
        return gm
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node in bodies:
            body = bodies[node]
            holes = [n for n in body.nodes if n.op == "placeholder"]
            outer = _arg_nodes(node)
            env[node] = graph.graph_copy(body, {h: env[o] for h, o in zip(holes, outer, strict=True)})
        elif node.target is operator.getitem and isinstance(env[node.args[0]], (tuple, list)):
            env[node] = env[node.args[0]][node.args[1]]  # an item of what an inlined function returned
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    new = fx.GraphModule(gm, graph, gm.__class__.__name__)
    new.train(gm.training)
    return new if _same_function(gm, new, inputs) else gm


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    """The distinct nodes among a call's arguments, in the order ``map_arg`` first visits them."""
    found: list[fx.Node] = []
    map_arg((node.args, node.kwargs), found.append)
    return list(dict.fromkeys(found))


def _body(gm: fx.GraphModule, node: fx.Node, recorded: Arguments) -> fx.Graph | None:
    """The graph of one call of ``node.target`` traced with the recorded argument values, or ``None``."""
    tracer = _ValueTracer(gm, node.name)
    values = _values_of(recorded, node)
    proxies = {n: tracer.placeholder(values[n]) for n in _arg_nodes(node)}
    args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]],
                        map_arg((node.args, node.kwargs), cast(Callable[[fx.Node], Any], proxies.__getitem__)))
    fn = cast(Callable[..., Any], node.target)
    try:
        with torch.no_grad():
            out = fn(*args, **kwargs)
        tracer.create_node("output", "output", (tracer.create_arg(out),), {})
    except Exception:  # whatever the function does that values cannot answer: keep the call whole
        return None
    body = tracer.graph
    _drop_unused_sizes(body, tracer.static)
    calls = [n for n in body.nodes if n.op not in ("placeholder", "output")]
    if len(calls) == 1 and calls[0].target is node.target:  # a torch function that records itself again
        return None
    return body


def _drop_unused_sizes(graph: fx.Graph, static: set[fx.Node]) -> None:
    """Remove the size arithmetic and comparisons nothing reads (the branches taken left them behind). Unused
    tensor ops stay: one may update a tensor in place (fx's dead-code pass removes those)."""
    for node in reversed(list(graph.nodes)):
        if node in static and not node.users:
            graph.erase_node(node)


def _values_of(recorded: Arguments, node: fx.Node) -> dict[fx.Node, Any]:
    """The recorded value of each node among ``node``'s arguments."""
    out: dict[fx.Node, Any] = {}

    def visit(a: Any, v: Any) -> None:
        if isinstance(a, fx.Node):
            out.setdefault(a, v)
        elif isinstance(a, (list, tuple)):
            for x, y in zip(a, v, strict=True):
                visit(x, y)
        elif isinstance(a, dict):
            for k in a:
                visit(a[k], v[k])

    visit((node.args, node.kwargs), recorded)
    return out


def _same_function(old: fx.GraphModule, new: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> bool:
    """Both graphs give the same outputs on ``inputs`` and, when the original takes it, on the batch repeated
    (each run from the same random state: a function traced in training mode may draw random numbers)."""
    doubled = tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)
    for batch in (inputs, doubled):
        flags = {m: m.training for m in (*old.modules(), new)}
        try:
            old.eval()
            new.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                state = torch.get_rng_state()
                try:
                    want = old(*batch)
                except Exception:
                    if batch is doubled:
                        continue
                    return False
                torch.set_rng_state(state)
                try:
                    got = new(*batch)
                except Exception:
                    return False
        finally:
            for m, flag in flags.items():
                m.train(flag)
        if not _close(want, got):
            return False
    return True


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(a.abs().max()) if a.numel() else 0.0)
            if a.is_floating_point() else torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)
