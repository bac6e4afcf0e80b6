"""The torch.export front end: an exported (training-IR) aten graph, normalised into a torch-level fx graph.

``export_program`` runs ``torch.export.export(strict=False)`` on (a structural copy of) the model with every
dim of every input tensor ``Dim.AUTO``: the dims export can keep symbolic stay dynamic, so the graph runs
on batches of another size and length. ``normalise`` then rebuilds the graph node by node over a root
module holding the model's tensors under their own names:

- parameters and buffers become ``get_attr`` of their fully-qualified names (never export's ``p_...``);
- layer calls become ``call_module`` of the layer (``export_layers``), other aten overloads the torch-level
  call ``aten_table.ATEN`` names; overloads outside both tables stay as they are (they run, and the channel
  rules name them as ops they do not know);
- ``wrap_with_set_grad_enabled`` and ``wrap_with_autocast`` with autocast off are inlined (exact for
  inference); any other higher-order op (``flat_apply`` in transformers 4.57's vmapped masks) stays a call,
  its subgraph or constants held by the root as ``_export_<name>``; the rules name it where it meets a channel;
- tensor constants the forward made are written back as ``torch.tensor([...])`` when small, else kept as
  buffers (outside the ``state_dict``) of the module that made them;
- the inputs are placeholders named after the forward's parameters (constants such as ``use_cache=False``
  are baked in); the output is rebuilt in the model's own structure (a ``ModelOutput``, a dict, a tuple).

So every channel rule, pass, package and ONNX export works on it as on a graph torch.fx traced.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import operator
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, cast

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.node import map_aggregate, map_arg

from hetsurgery.errors import TracingError
from hetsurgery.ir.structure import attribute_at, owner_of
from hetsurgery.tracing.aten_table import ATEN, Drop, bind, static_int
from hetsurgery.tracing.export_layers import LAYERS, module_path
from hetsurgery.tracing.export_vmap import outline_vmaps

_HOP = torch._ops.HigherOrderOperator
_LITERAL = 16  # lifted constants of at most this many elements are written as torch.tensor([...]) calls


@dataclasses.dataclass(frozen=True)
class _Attr:
    """A tensor of the root read by ``get_attr`` (made only where something other than a layer call reads it)."""

    target: str


@dataclasses.dataclass(frozen=True, eq=False)
class _Literal:
    """A small tensor constant the forward made from Python numbers (``torch.tensor(1.0)``): written back as
    ``torch.tensor([...])`` where it is read."""

    value: torch.Tensor


@dataclasses.dataclass(frozen=True)
class _Held:
    """What the exported graph module holds besides its tensors: a higher-order op's subgraph, or a constant
    one of its calls takes (the ``TreeSpec`` of ``flat_apply``)."""

    value: Any
    target: str


def export_program(root: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
                   ) -> tuple[ExportedProgram, tuple[str, ...]]:
    """``torch.export.export(root, args, kwargs, strict=False)`` in eval mode (the flags restored), every dim
    of every tensor input ``Dim.AUTO``; static shapes when export refuses the dynamic ones (said in the notes)."""
    flags = {m: m.training for m in root.modules()}
    notes: tuple[str, ...] = ()
    try:
        root.eval()
        try:
            ep = torch.export.export(root, args, dict(kwargs), dynamic_shapes=_auto_dims(root, args, kwargs),
                                     strict=False)
        except Exception as dynamic:  # export raises many types for one cause
            try:
                ep = torch.export.export(root, args, dict(kwargs), strict=False)
            except Exception as exc:
                raise TracingError(f"{name}: torch.export cannot export the model either: {one_line(f'{type(exc).__name__}: {exc}')}") from exc
            notes = (f"static shapes (export refused dynamic dims: {one_line(f'{type(dynamic).__name__}: {dynamic}')})",)
    finally:
        for m, flag in flags.items():
            m.train(flag)
    return ep, notes


def _auto_dims(root: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(root.forward).bind(*args, **kwargs)
    return {k: _auto(v) for k, v in bound.arguments.items()}


def _auto(v: Any) -> Any:
    if isinstance(v, torch.Tensor):  # a dim of size 1 is specialised whatever is asked (torch warns then)
        return {d: torch.export.Dim.AUTO for d in range(v.dim()) if v.shape[d] > 1} or None
    if isinstance(v, (tuple, list)):
        return type(v)(_auto(x) for x in v)
    if isinstance(v, dict):
        return {k: _auto(x) for k, x in v.items()}
    return None


def one_line(text: str) -> str:
    """``text`` on one line of at most 240 characters (an error to say in a message)."""
    text = " ".join(text.split())
    return text[:240] + ("…" if len(text) > 240 else "")


def dynamic_dims(ep: ExportedProgram, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """What became dynamic: ``input_ids 0, 1``; a dim of size 1 in the example is always static (said)."""
    dims, single = [], []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or node.name not in inputs or not isinstance(val, torch.Tensor):
            continue
        symbolic = [d for d, s in enumerate(val.shape) if static_int(s) is None]
        if symbolic:
            dims.append(f"{node.name} {', '.join(map(str, symbolic))}")
        if val.dim() and 0 not in symbolic and inputs[node.name].shape[0] == 1:
            single.append(node.name)
    notes = [f"dynamic dims: {'; '.join(dims) or 'none'}"]
    if single:
        notes.append(f"the batch dim of {', '.join(single)} is static: the example's batch is 1 (give an example "
                     "batch of 2 or more to keep it dynamic)")
    return tuple(notes)


def user_inputs(ep: ExportedProgram) -> list[fx.Node]:
    """The placeholders of the user's inputs, in the order of the flattened ``(args, kwargs)``."""
    kinds = {s.arg.name: s.kind for s in ep.graph_signature.input_specs}
    return [n for n in ep.graph.nodes if n.op == "placeholder" and kinds.get(n.name) is InputKind.USER_INPUT]


def normalise(ep: ExportedProgram, root: nn.Module, name: str) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """``ep``'s graph as torch-level calls over ``root`` (which must hold every tensor ``ep`` reads under its
    fully-qualified name; lifted constants are added to it); the notes say what was inlined."""
    return _Normaliser(ep, root, name).module()


class _Normaliser:
    """The state of one normalisation; lives only inside ``normalise``."""

    def __init__(self, ep: ExportedProgram, root: nn.Module, name: str) -> None:
        self.ep, self.root, self.name = ep, root, name
        self.graph = fx.Graph()
        self.attrs: dict[str, fx.Node] = {}
        self.sizes: set[fx.Node] = set()  # nodes computing sizes: dropped when nothing reads them
        self.constants: list[str] = []  # notes: the lifted tensor constants kept as buffers
        self.inlined: collections.Counter[str] = collections.Counter()
        self.kept: list[str] = []

    def module(self) -> tuple[fx.GraphModule, tuple[str, ...]]:
        env = self._placeholders()
        self._output(self._run(self.ep.graph, env, self.ep.graph_module))
        for node in reversed(list(self.graph.nodes)):
            if not node.users and (node.op == "get_attr" or node in self.sizes):
                self.graph.erase_node(node)
        gm = outline_vmaps(fx.GraphModule(self.root, self.graph, type(self.root).__name__))
        notes = [*self.constants, *(f"inlined {n}× {op} (exact for inference)" for op, n in self.inlined.items())]
        notes += [f"kept higher-order op {k} as it is" for k in self.kept]
        return gm, tuple(notes)

    # -- inputs and outputs ----------------------------------------------------------------------
    def _placeholders(self) -> dict[fx.Node, Any]:
        specs = {s.arg.name: s for s in self.ep.graph_signature.input_specs}
        env: dict[fx.Node, Any] = {}
        for node in self.ep.graph.nodes:
            if node.op != "placeholder":
                continue
            spec = specs[node.name]
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                env[node] = _Attr(str(spec.target))
            elif spec.kind is InputKind.CONSTANT_TENSOR:
                value = self.ep.constants[str(spec.target)]
                env[node] = _Literal(value) if value.numel() <= _LITERAL else _Attr(self._home(node, str(spec.target)))
            elif spec.kind is InputKind.USER_INPUT:
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    env[node] = self.graph.placeholder(node.name)
                elif isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                    raise TracingError(f"{self.name}: input {node.name} is a dynamic number; give it as a constant")
                else:
                    env[node] = val  # a constant of the trace (use_cache=False)
            else:
                raise TracingError(f"{self.name}: the exported program takes {spec.kind.name} {node.name}, which "
                                   "hetsurgery cannot hold; export the model without script objects or effect tokens")
        return env

    def _home(self, node: fx.Node, target: str) -> str:
        """Put a lifted tensor constant on the module whose forward made it, under export's name for it, as a
        buffer outside the ``state_dict`` (like the ``_tensor_constant``s of torch.fx)."""
        owner = next((p for u in node.users if (p := module_path(u))), "")
        leaf = target.replace(".", "_")
        path = f"{owner}.{leaf}" if owner else leaf
        while _has(self.root, path):
            path += "_"
        _put(self.root, path, self.ep.constants[target])
        self.constants.append(f"lifted constant {target} kept as buffer {path}")
        return path

    def _output(self, flat: Any) -> None:
        user: list[Any] = []
        for spec, value in zip(self.ep.graph_signature.output_specs, flat, strict=True):
            if spec.kind in (OutputKind.USER_OUTPUT, OutputKind.LOSS_OUTPUT):
                user.append(self._value(value))
            elif spec.kind is OutputKind.BUFFER_MUTATION:  # the model writes a buffer: keep the write
                self.graph.call_method("copy_", (self._attr(str(spec.target)), self._value(value)))
            else:
                raise TracingError(f"{self.name}: the exported program returns {spec.kind.name} {spec.arg}, which "
                                   "hetsurgery cannot keep; export a model that does not change its inputs")
        self.graph.output(self._unflatten(self.ep.call_spec.out_spec, iter(user)))

    def _unflatten(self, spec: Any, leaves: Iterator[Any]) -> Any:
        """The model's output structure, built from ``leaves`` (containers that are classes become calls)."""
        if spec.is_leaf():
            return next(leaves)
        children = [self._unflatten(c, leaves) for c in _children(spec)]
        kind, context = spec.type, spec.context
        if kind in (tuple, list):
            return kind(children)
        if kind in (dict, collections.OrderedDict):
            return dict(zip(context, children, strict=True))
        if isinstance(context, type) and issubclass(context, tuple) and hasattr(context, "_fields"):
            return self.graph.call_function(context, tuple(children))  # a namedtuple
        if dataclasses.is_dataclass(kind) and isinstance(context, (list, tuple)) \
                and all(isinstance(k, str) for k in context):
            return self.graph.call_function(cast(Any, kind), (), dict(zip(context, children, strict=True)))  # ModelOutput
        raise TracingError(f"{self.name}: the model returns a {getattr(kind, '__qualname__', kind)}, a container "
                           "hetsurgery cannot rebuild; return tensors in tuples, lists, dicts, namedtuples or "
                           "dataclasses")

    # -- the walk --------------------------------------------------------------------------------
    def _run(self, graph: fx.Graph, env: dict[fx.Node, Any], owner: fx.GraphModule) -> Any:
        for node in graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                return map_arg(node.args[0], env.__getitem__)
            if node.op == "get_attr":
                env[node] = _Held(getattr(owner, str(node.target)), str(node.target))
                continue
            args, kwargs = map_arg((node.args, node.kwargs), env.__getitem__)
            env[node] = self._call(node, args, kwargs)
        raise TracingError(f"{self.name}: the exported graph has no output")

    def _call(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        target = node.target
        if target is operator.getitem and isinstance(args[0], (tuple, list)):
            return args[0][args[1]]  # an item of what an inlined subgraph returned
        if isinstance(target, _HOP):
            return self._higher_order(node, args, kwargs)
        if isinstance(target, torch._ops.OpOverload):
            bound = bind(target, args, kwargs)
            layer = self._layer(node, target, bound)
            if layer is not None:
                return layer
            rewrite = ATEN.get(target)
            if isinstance(rewrite, Drop):
                return None
            if rewrite is not None:
                out = rewrite.emit(self.graph, {k: self._value(v) for k, v in bound.items()}, node, target)
                if out is not None:
                    self._note_size(node, out)
                    return out
        out = self.graph.create_node(node.op, target, self._value(args), self._value(kwargs), node.name)
        self._note_size(node, out)
        return out

    def _note_size(self, node: fx.Node, out: Any) -> None:
        """Sizes and other numbers are pure: erased at the end when nothing reads them (their asserts went)."""
        if isinstance(out, fx.Node) and isinstance(node.meta.get("val"), (int, float, bool, torch.SymInt,
                                                                           torch.SymFloat, torch.SymBool)):
            self.sizes.add(out)

    def _layer(self, node: fx.Node, op: torch._ops.OpOverload, bound: Mapping[str, Any]) -> fx.Node | None:
        """``call_module P`` when the call is exactly the forward of the layer at ``P`` (``export_layers``)."""
        layer, path = LAYERS.get(op), module_path(node)
        if layer is None or path is None:
            return None
        try:
            mod = self.root.get_submodule(path)
        except AttributeError:
            return None
        tensors = {k: self._tensor(v) for k, v in bound.items()}
        if not layer.matches(mod, tensors) or isinstance(bound[layer.input], (_Attr, _Held, _Literal)):
            return None
        return self.graph.call_module(path, (self._value(bound[layer.input]),))

    def _higher_order(self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hop = node.target
        where = _INLINE.get(hop)
        inline = where(args) if where is not None and not kwargs else None
        sub = args[inline] if inline is not None else None
        if inline is not None and isinstance(sub, _Held) and isinstance(sub.value, fx.GraphModule):
            holes = [n for n in sub.value.graph.nodes if n.op == "placeholder"]
            self.inlined[str(getattr(hop, "__name__", hop))] += 1
            return self._run(sub.value.graph, dict(zip(holes, args[inline + 1:], strict=True)), sub.value)
        self.kept.append(f"{getattr(hop, '__name__', hop)} at node {node.name}")
        return self.graph.create_node("call_function", hop, self._value(args), self._value(kwargs), node.name)

    # -- values ----------------------------------------------------------------------------------
    def _value(self, a: Any) -> Any:
        """``a`` with every lazily read tensor and subgraph turned into a ``get_attr`` node."""
        return map_aggregate(a, self._one)

    def _one(self, x: Any) -> Any:
        if isinstance(x, _Attr):
            return self._attr(x.target)
        if isinstance(x, _Held):
            return self._held(x)
        if isinstance(x, _Literal):
            t = x.value
            return self.graph.call_function(torch.tensor, (t.tolist(),), {"dtype": t.dtype, "device": t.device})
        return x

    def _attr(self, target: str) -> fx.Node:
        if target not in self.attrs:
            self.attrs[target] = self.graph.get_attr(target)
        return self.attrs[target]

    def _held(self, held: _Held) -> fx.Node:
        """A ``get_attr`` of what the exported graph module held, put on the root as ``_export_<its name>``."""
        path = f"_export_{held.target.replace('.', '_')}"
        if not _has(self.root, path):
            if isinstance(held.value, nn.Module):
                self.root.add_module(path, held.value)
            elif isinstance(held.value, torch.Tensor):
                self.root.register_buffer(path, held.value, persistent=False)
            else:
                setattr(self.root, path, held.value)
        return self._attr(path)

    def _tensor(self, v: Any) -> Any:
        """The root's tensor for a lazily read one (for comparing tensors by identity), else ``v``."""
        if not isinstance(v, _Attr):
            return v
        return attribute_at(self.root, v.target)


# the higher-order ops whose subgraph is inlined, exactly for inference: where their subgraph argument is
_INLINE: Mapping[Any, Callable[[tuple[Any, ...]], int | None]] = MappingProxyType({
    torch.ops.higher_order.wrap_with_set_grad_enabled: lambda args: 1,  # (enabled, subgraph, *inputs)
    torch.ops.higher_order.wrap_with_autocast: lambda args: None if args[2] else 4,  # (device, dtype, enabled, ...)
})


def _children(spec: Any) -> list[Any]:
    return list(spec.children()) if callable(getattr(spec, "children", None)) else list(spec.children_specs)


def _has(root: nn.Module, path: str) -> bool:
    return attribute_at(root, path) is not None


def _put(root: nn.Module, path: str, value: torch.Tensor) -> None:
    """A buffer outside the ``state_dict`` at ``path``, creating empty modules on the way."""
    owner, leaf = owner_of(root, path, make=True)
    owner.register_buffer(leaf, value, persistent=False)
