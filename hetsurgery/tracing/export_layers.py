"""Layer calls of an exported graph written back as calls of the layers (``call_module``).

``torch.export`` inlines every layer: ``nn.Linear`` at ``model.layers.0.mlp.up_proj`` becomes
``aten.linear(x, W, b)`` with the layer's path kept in the node's ``nn_module_stack``. When the innermost
module of that stack is a layer ``classify`` knows (the exact class or one of the few subclasses it
accepts), its tensors are the call's tensors (by identity) and its attributes are the call's
(``stride``, ``eps``, ``padding_idx``, ...), the call is exactly ``P(x)``: it becomes ``call_module P``, the
form every channel rule, unit finder and package knows. Anything else keeps its functional form.

An ``ExportedProgram`` given without its model holds no layer objects: ``build`` makes one of the class the
stack names from the call's arguments (on the meta device; the program's tensors are then put in it).

>>> import torch
>>> aten = torch.ops.aten
>>> lin = torch.nn.Linear(3, 2)
>>> LAYERS[aten.linear.default].matches(lin, {"input": None, "weight": lin.weight, "bias": lin.bias})
True
>>> LAYERS[aten.linear.default].matches(lin, {"input": None, "weight": lin.weight, "bias": None})
False
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import fx, nn

from hetsurgery.ir import OpKind
from hetsurgery.tracing.classify import MODULES

aten = torch.ops.aten
Bound = Mapping[str, Any]  # the call's arguments by schema name; tensors as the tensors themselves


def _classes(kind: OpKind, base: type[nn.Module]) -> tuple[type[nn.Module], ...]:
    """The module classes ``classify`` maps onto ``kind`` that are ``base`` (or the subclasses it accepts)."""
    return tuple(c for c, k in MODULES.items() if k is kind and issubclass(c, base))


def _ints(v: Any, k: int) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * k


@dataclass(frozen=True)
class Layer:
    """One aten layer op: the module classes it may be a call of, its input and tensors (schema name ->
    module attribute), the module attributes the call implies, and how to make a module for the call."""

    classes: tuple[type[nn.Module], ...]
    input: str
    tensors: tuple[tuple[str, str], ...]
    attrs: Callable[[Bound, Any], bool]  # (call, module): the module's attributes are the call's
    build: Callable[[Bound, type[nn.Module]], nn.Module | None]

    def matches(self, mod: nn.Module, bound: Bound) -> bool:
        """Whether ``mod(bound[input])`` computes exactly this call."""
        return type(mod) in self.classes and all(getattr(mod, attr, None) is bound.get(name)
                                                 for name, attr in self.tensors) and self.attrs(bound, mod)


def _linear() -> Layer:
    def build(b: Bound, cls: type[nn.Module]) -> nn.Module:
        w = b["weight"]
        return cls(w.shape[1], w.shape[0], bias=b.get("bias") is not None, device="meta")
    return Layer(_classes(OpKind.LINEAR, nn.Linear), "input", (("weight", "weight"), ("bias", "bias")),
                 lambda b, m: True, build)


def _conv(k: int) -> Layer:
    base: type[nn.Module] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]

    def same(b: Bound, m: Any) -> bool:
        pad = b["padding"] if isinstance(b["padding"], str) else _ints(b["padding"], k)
        return (m.padding_mode == "zeros" and tuple(m.stride) == _ints(b["stride"], k) and m.padding == pad
                and tuple(m.dilation) == _ints(b["dilation"], k) and m.groups == b["groups"])

    def build(b: Bound, cls: type[nn.Module]) -> nn.Module:
        w, g = b["weight"], b["groups"]
        pad = b["padding"] if isinstance(b["padding"], str) else _ints(b["padding"], k)
        return cls(w.shape[1] * g, w.shape[0], tuple(w.shape[2:]), _ints(b["stride"], k), pad,
                   _ints(b["dilation"], k), g, bias=b.get("bias") is not None, device="meta")
    return Layer(_classes(OpKind.CONV, base), "input", (("weight", "weight"), ("bias", "bias")), same, build)


def _layer_norm() -> Layer:
    def build(b: Bound, cls: type[nn.Module]) -> nn.Module:
        return cls(tuple(b["normalized_shape"]), b["eps"], elementwise_affine=b.get("weight") is not None,
                   bias=b.get("bias") is not None, device="meta")
    return Layer(_classes(OpKind.LAYER_NORM, nn.LayerNorm), "input", (("weight", "weight"), ("bias", "bias")),
                 lambda b, m: tuple(m.normalized_shape) == tuple(b["normalized_shape"]) and m.eps == b["eps"], build)


def _rms_norm() -> Layer:
    def build(b: Bound, cls: type[nn.Module]) -> nn.Module:
        return cls(tuple(b["normalized_shape"]), b.get("eps"), elementwise_affine=b.get("weight") is not None,
                   device="meta")
    return Layer(_classes(OpKind.LAYER_NORM, nn.RMSNorm), "input", (("weight", "weight"),),
                 lambda b, m: tuple(m.normalized_shape) == tuple(b["normalized_shape"]) and m.eps == b.get("eps"),
                 build)


def _embedding() -> Layer:
    def padding(b: Bound) -> int | None:
        pad = b.get("padding_idx", -1)
        return None if pad == -1 else pad

    def build(b: Bound, cls: type[nn.Module]) -> nn.Module:
        w = b["weight"]
        return cls(w.shape[0], w.shape[1], padding_idx=padding(b), device="meta")
    return Layer(_classes(OpKind.EMBEDDING, nn.Embedding), "indices", (("weight", "weight"),),
                 lambda b, m: m.max_norm is None and m.padding_idx == padding(b), build)


def _group_norm() -> Layer:
    def build(b: Bound, cls: type[nn.Module]) -> nn.Module | None:
        w = b.get("weight")
        return None if w is None else cls(b["num_groups"], w.shape[0], b["eps"], affine=True, device="meta")
    return Layer(_classes(OpKind.GROUP_NORM, nn.GroupNorm), "input", (("weight", "weight"), ("bias", "bias")),
                 lambda b, m: m.num_groups == b["num_groups"] and m.eps == b["eps"], build)


def _batch_norm() -> Layer:
    def same(b: Bound, m: Any) -> bool:  # eval mode: the running statistics normalise
        return not b["training"] and bool(m.track_running_stats) and m.eps == b["eps"]

    def build(b: Bound, cls: type[nn.Module]) -> nn.Module | None:
        mean = b.get("running_mean")
        if mean is None or b["training"]:
            return None
        return cls(mean.shape[0], b["eps"], b["momentum"], affine=b.get("weight") is not None, device="meta")
    tensors = (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"), ("running_var", "running_var"))
    return Layer(_classes(OpKind.BATCH_NORM, nn.modules.batchnorm._BatchNorm), "input", tensors, same, build)


LAYERS: Mapping[torch._ops.OpOverload, Layer] = MappingProxyType({
    aten.linear.default: _linear(),
    **{getattr(aten, f"conv{k}d").default: _conv(k) for k in (1, 2, 3)},
    **{getattr(aten, f"conv{k}d").padding: _conv(k) for k in (1, 2, 3)},
    aten.layer_norm.default: _layer_norm(), aten.rms_norm.default: _rms_norm(), aten.embedding.default: _embedding(),
    aten.group_norm.default: _group_norm(), aten.batch_norm.default: _batch_norm(),
})

_CALL = re.compile(r"@\d+$")  # torch marks the second and later calls of a module: "layers.0@1"


def module_path(node: fx.Node) -> str | None:
    """The path of the innermost module whose forward made this call (``None`` at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in reversed(list(stack.values())):
        if isinstance(path, str) and not path.startswith("_empty_nn_module_stack"):
            return _CALL.sub("", path) or None
    return None


def module_class(node: fx.Node) -> str | None:
    """The qualified class name (``torch.nn.modules.linear.Linear``) of the innermost module of the call."""
    stack = node.meta.get("nn_module_stack") or {}
    entries = [v for v in stack.values() if isinstance(v[0], str) and not v[0].startswith("_empty_nn_module_stack")]
    if not entries:
        return None
    cls = entries[-1][1]
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def program_name(gm: fx.GraphModule) -> str | None:
    """The class name of the module an exported graph was made from (its top ``nn_module_stack`` entry)."""
    for node in gm.graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if path == "":
                return (cls if isinstance(cls, str) else cls.__qualname__).rpartition(".")[2]
    return None


def layer_class(layer: Layer, qualified: str | None) -> type[nn.Module] | None:
    """The class among ``layer.classes`` that ``qualified`` names (the names torch wrote from those classes)."""
    return next((c for c in layer.classes if f"{c.__module__}.{c.__qualname__}" == qualified), None)
