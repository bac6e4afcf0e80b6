"""``graph.json``: a lowered fx graph as data, so that a package loads without running any of its code.

It holds the layers (``torch.nn`` class and constructor arguments), the tensors no layer owns, the tied
names, the example input specs and the fx nodes. Node targets are written by name and resolved on
reading against ``allow_list``; arguments are JSON values (``graph_values``). Reading checks every name
before anything is built; ``rebuild`` then makes the ``GraphModule``.

>>> import json, torch, hetsurgery as hs
>>> from hetsurgery.export.codegen import layout_of
>>> gm = hs.to_module(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)))
>>> doc = graph_document(gm, layout_of(gm), [((2, 4), "float32")])
>>> print(graph_json(doc).splitlines()[-4])
 {"op": "call_module", "name": "layers_2", "target": "layers.2", "args": [{"node": "layers_1"}], "kwargs": {}},
>>> data = read_graph_data(json.loads(graph_json(doc)), "graph.json")
>>> data.modules["layers.0"]
(<class 'torch.nn.modules.linear.Linear'>, {'in_features': 4, 'out_features': 8})
"""

from __future__ import annotations

import json
import keyword
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import fx, nn

from hetsurgery.errors import ExportError
from hetsurgery.export import allow_list
from hetsurgery.export.codegen import BUFFER, CONSTANT, PARAMETER, TRANSIENT, InputSpec, Layout, TensorSpec
from hetsurgery.export.errors import InputError
from hetsurgery.export.graph_values import GraphValueError, decode, encode
from hetsurgery.export.modules import ARGS
from hetsurgery.tracing.units import ORIGIN_META

GRAPH_FORMAT = "hetsurgery-graph/1"
TENSOR_KINDS = (PARAMETER, BUFFER, TRANSIENT, CONSTANT)
_PLACEHOLDER = re.compile(r"\*{0,2}[A-Za-z_][A-Za-z0-9_]*")  # x, *args, **kwargs
# the generated forward's first parameter: fx renames a node named like a global, not one named self
_RESERVED = frozenset({"self"})
_ORIGIN = re.compile(r"[a-z][a-z-]{0,39}")  # a structural pass's name, e.g. insert-identity


class NodeOp(Enum):
    """The fx node kinds (``fx.Node.op``)."""

    PLACEHOLDER = "placeholder"
    GET_ATTR = "get_attr"
    CALL_FUNCTION = "call_function"
    CALL_METHOD = "call_method"
    CALL_MODULE = "call_module"
    OUTPUT = "output"


@dataclass(frozen=True)
class GraphData:
    """A checked ``graph.json``: layers, loose tensors, ties, example input specs and the fx graph."""

    modules: Mapping[str, tuple[type[nn.Module], dict[str, Any]]]
    tensors: Mapping[str, TensorSpec]
    tied: Mapping[str, str]
    inputs: tuple[InputSpec, ...]
    graph: fx.Graph = field(repr=False)


def graph_document(gm: fx.GraphModule, layout: Layout, inputs: Sequence[InputSpec]) -> dict[str, Any]:
    """The JSON object of ``graph.json`` for ``gm``; ``ExportError`` naming a node it cannot record."""
    return {
        "format": GRAPH_FORMAT,
        "modules": {name: {"class": cls, "kwargs": {k: encode(v) for k, v in kwargs.items()}}
                    for name, (cls, kwargs) in layout.modules.items()},
        "tensors": {name: {"kind": kind, "shape": list(shape), "dtype": dtype}
                    for name, (kind, shape, dtype) in layout.tensors.items()},
        "tied": dict(layout.tied),
        "inputs": [{"shape": list(shape), "dtype": dtype} for shape, dtype in inputs],
        "nodes": [_node_document(node) for node in gm.graph.nodes],
    }


def graph_json(doc: Mapping[str, Any]) -> str:
    """The text of ``graph.json``: one layer, tensor, input or node per line, so that it reads and diffs."""
    parts = []
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            rows = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value:
            rows = [f" {json.dumps(v)}" for v in value]
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value)}")
            continue
        brackets = "{}" if isinstance(value, dict) else "[]"
        parts.append(f"{json.dumps(key)}: {brackets[0]}\n" + ",\n".join(rows) + f"\n{brackets[1]}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _node_document(node: fx.Node) -> dict[str, Any]:
    op = NodeOp(node.op)
    reason = _refused_call(op, node.target, node.args, node.kwargs)
    if reason is not None:
        raise ExportError(f"node {node.name!r} {reason}")
    try:
        doc: dict[str, Any] = {"op": node.op, "name": node.name, "target": _target_text(node),
                               "args": encode(list(node.args)), "kwargs": {k: encode(v) for k, v in node.kwargs.items()}}
    except GraphValueError as exc:
        raise ExportError(f"node {node.name!r} has an argument graph.json cannot record: {exc}") from exc
    if op is NodeOp.PLACEHOLDER and node.type in (torch.Tensor, "torch.Tensor"):
        doc["type"] = "torch.Tensor"
    origin = node.meta.get(ORIGIN_META)
    if isinstance(origin, str) and origin:
        doc["origin"] = origin  # the structural pass that made the node: pictures mark inserted units
    return doc


def _target_text(node: fx.Node) -> str:
    if node.op != NodeOp.CALL_FUNCTION.value:
        return str(node.target)
    text = allow_list.function_name(node.target)
    if text is None:
        fn = f"{getattr(node.target, '__module__', None)}.{getattr(node.target, '__qualname__', node.target)}"
        raise ExportError(
            f"node {node.name!r} calls {fn}, which a package cannot record: graph.json names only torch ops, "
            "torch.nn.functional, operator functions and getattr, so that packages load without running code. "
            "Write the forward with those functions.")
    return text


def read_graph_data(raw: object, source: str) -> GraphData:
    """Check a parsed ``graph.json`` and build its fx graph; ``InputError`` naming ``source`` and the node."""
    try:
        return _read(raw)
    except (GraphValueError, _Refused) as exc:
        raise InputError(f"{source}: {exc}") from exc


class _Refused(ValueError):
    """Something in graph.json that a package may not hold or run."""


def _read(raw: object) -> GraphData:
    doc = _mapping(raw, "the file")
    fmt = doc.get("format")
    if fmt != GRAPH_FORMAT:
        raise _Refused(f"format {fmt!r:.60} is not {GRAPH_FORMAT!r} (written by another version of hetsurgery?)")
    return GraphData(
        modules={_dotted(name, "layer"): _layer(name, spec) for name, spec in _mapping(doc.get("modules"), "modules").items()},
        tensors={_dotted(name, "tensor"): _tensor(name, spec) for name, spec in _mapping(doc.get("tensors"), "tensors").items()},
        tied={_dotted(alias, "tied name"): _dotted(source, "tied name")
              for alias, source in _mapping(doc.get("tied"), "tied").items()},
        inputs=tuple(_input(spec) for spec in _list(doc.get("inputs"), "inputs")),
        graph=_graph(_list(doc.get("nodes"), "nodes")),
    )


def _layer(name: str, spec: object) -> tuple[type[nn.Module], dict[str, Any]]:
    body = _mapping(spec, f"layer {name!r}")
    cls = allow_list.layer_class(body.get("class"))
    if cls is None:
        raise _Refused(f"layer {name!r} is a {body.get('class')!r:.60}, which is not a torch.nn layer a package "
                       "may rebuild")
    kwargs = {key: decode(value, _no_nodes) for key, value in _mapping(body.get("kwargs", {}), "kwargs").items()}
    unknown = sorted(set(kwargs) - set(ARGS[cls]))
    if unknown:
        raise _Refused(f"layer {name!r} ({cls.__name__}) has constructor arguments {unknown} a package does not set")
    return cls, kwargs


def _tensor(name: str, spec: object) -> TensorSpec:
    body = _mapping(spec, f"tensor {name!r}")
    kind, shape, dtype = body.get("kind"), body.get("shape"), body.get("dtype")
    if kind not in TENSOR_KINDS:
        raise _Refused(f"tensor {name!r} has kind {kind!r:.40}, not one of {', '.join(TENSOR_KINDS)}")
    return str(kind), _shape(shape, f"tensor {name!r}"), _dtype(dtype, f"tensor {name!r}")


def _input(spec: object) -> InputSpec:
    body = _mapping(spec, "an input")
    return _shape(body.get("shape"), "an input"), _dtype(body.get("dtype"), "an input")


def _graph(nodes: list[Any]) -> fx.Graph:
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}

    def node_named(name: str) -> fx.Node:
        if name not in made:
            raise _Refused(f"a node uses {name!r:.60}, which no earlier node defines")
        return made[name]

    for raw in nodes:
        body = _mapping(raw, "a node")
        name = body.get("name")
        if not allow_list.is_identifier(name) or name in _RESERVED or name in made:
            raise _Refused(f"node name {name!r:.60} is not a Python name or is used twice")
        try:
            op = NodeOp(body.get("op"))
            args = decode(body.get("args", []), node_named)
            kwargs = _mapping(body.get("kwargs", {}), "kwargs")
            kwargs = {key: decode(value, node_named) for key, value in kwargs.items()}
            target = _TARGETS[op](body.get("target"))
        except (ValueError, GraphValueError) as exc:
            raise _Refused(f"node {name!r}: {exc}") from exc
        if not isinstance(args, list) or not all(allow_list.is_identifier(key) for key in kwargs):
            raise _Refused(f"node {name!r}: args must be a list and keyword names Python names")
        reason = _refused_call(op, target, args, kwargs)
        if reason is not None:
            raise _Refused(f"node {name!r} {reason}")
        type_expr = torch.Tensor if body.get("type") == "torch.Tensor" else None
        made[name] = graph.create_node(op.value, target, tuple(args), kwargs, name=name, type_expr=type_expr)
        origin = body.get("origin")
        if origin is not None:
            if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
                raise _Refused(f"node {name!r}: origin {origin!r:.60} is not the name of a pass")
            made[name].meta[ORIGIN_META] = origin
    if not made or next(reversed(graph.nodes)).op != NodeOp.OUTPUT.value:
        raise _Refused("the graph does not end with its output node")
    return graph


def _function(text: object) -> Callable[..., Any]:
    fn = allow_list.resolve_function(text) if isinstance(text, str) else None
    if fn is None:
        raise _Refused(f"calls {text!r:.80}, which is not a torch op, a torch.nn.functional function, an operator "
                       "function or getattr: a package may not run it")
    return fn


def _name(pattern: Callable[[object], bool], what: str) -> Callable[[object], str]:
    def check(text: object) -> str:
        if not pattern(text):
            raise _Refused(f"{what} {text!r:.60} is not a valid name")
        return str(text)
    return check


_TARGETS: Mapping[NodeOp, Callable[[object], Any]] = types.MappingProxyType({
    NodeOp.PLACEHOLDER: _name(lambda t: isinstance(t, str) and bool(_PLACEHOLDER.fullmatch(t))
                              and t.lstrip("*") not in _RESERVED and not keyword.iskeyword(t.lstrip("*")), "input"),
    NodeOp.GET_ATTR: _name(allow_list.is_dotted_name, "attribute"),
    NodeOp.CALL_MODULE: _name(allow_list.is_dotted_name, "layer"),
    NodeOp.CALL_METHOD: _name(allow_list.is_identifier, "method"),
    NodeOp.CALL_FUNCTION: _function,
    NodeOp.OUTPUT: _name(lambda t: t == "output", "output target"),
})


def _refused_call(op: NodeOp, target: object, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """Why a call may not run (``None`` if it may): a method outside the tensor methods, a method called on
    a literal, or a ``getattr`` that reads anything but a tensor attribute."""
    if op is NodeOp.CALL_METHOD:
        if not allow_list.method_allowed(str(target)):
            return f"calls the method {target!r:.60}, which is not a tensor method a package may call"
        if not args or not isinstance(args[0], fx.Node):
            return f"calls the method {target!r:.60} on a literal, not on a value of the graph"
    reads_attribute = (len(args) == 2 and isinstance(args[0], fx.Node) and isinstance(args[1], str)
                       and args[1] in allow_list.TENSOR_ATTRIBUTES)
    if op is NodeOp.CALL_FUNCTION and target is getattr and (kwargs or not reads_attribute):
        return (f"reads the attribute {args[1:2]!r:.60} with getattr; a package reads only tensor attributes "
                f"({', '.join(sorted(allow_list.TENSOR_ATTRIBUTES))})")
    return None


def _no_nodes(name: str) -> Any:
    raise _Refused(f"a layer argument names the node {name!r:.60}")


def _mapping(raw: object, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise _Refused(f"{what} must be a JSON object, not {type(raw).__name__}")
    return raw


def _list(raw: object, what: str) -> list[Any]:
    if not isinstance(raw, list):
        raise _Refused(f"{what} must be a JSON list, not {type(raw).__name__}")
    return raw


def _dotted(name: object, what: str) -> str:
    if not allow_list.is_dotted_name(name):
        raise _Refused(f"{what} name {name!r:.60} is not a dotted Python name")
    return str(name)


def _shape(raw: object, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise _Refused(f"{what} has shape {raw!r:.60}, not a list of sizes")
    return tuple(raw)


def _dtype(raw: object, what: str) -> str:
    if not isinstance(raw, str) or not isinstance(vars(torch).get(raw), torch.dtype):
        raise _Refused(f"{what} has dtype {raw!r:.40}, not a torch dtype")
    return raw
