"""Rebuild a package's model from ``graph.json`` data and the tensors of ``model.safetensors``.

The layers are built on the meta device (no memory, no random initialisation) and receive the stored
tensors with ``load_state_dict(assign=True)``, so each keeps its stored dtype; loose tensors and ties
are placed as ``model.py`` places them. The graph goes in last, once every name it reads exists.

>>> import json, torch, hetsurgery as hs
>>> from hetsurgery.export.codegen import layout_of
>>> from hetsurgery.export.graph_data import graph_document, graph_json, read_graph_data
>>> gm = hs.to_module(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)))
>>> layout = layout_of(gm)
>>> data = read_graph_data(json.loads(graph_json(graph_document(gm, layout, []))), "graph.json")
>>> twin = rebuild(data, dict(layout.stored))
>>> x = torch.randn(3, 4)
>>> bool(torch.equal(twin(x), gm(x)))
True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx, nn

from hetsurgery.export.codegen import BUFFER, CONSTANT, PARAMETER, TRANSIENT
from hetsurgery.export.graph_data import GraphData, NodeOp
from hetsurgery.ir.structure import attribute_at

MODULE = "module"


class RebuildError(ValueError):
    """The tensors or names of a package do not fit its graph data."""


def rebuild(data: GraphData, tensors: Mapping[str, torch.Tensor]) -> fx.GraphModule:
    """The model of ``data`` with ``tensors`` (each used as it is, not copied), in eval mode."""
    model = fx.GraphModule(nn.Module(), fx.Graph(), class_name="Model")
    with torch.device("meta"):
        for name, (cls, kwargs) in data.modules.items():
            _place(model, name, cls(**kwargs), MODULE)
        for name, (kind, shape, dtype) in data.tensors.items():
            _place(model, name, torch.empty(shape, dtype=getattr(torch, dtype)), kind)
    _tie(model, data.tied)
    state = dict(tensors)
    loose = {name: _pop(state, name) for name, (kind, _, _) in data.tensors.items() if kind in (TRANSIENT, CONSTANT)}
    state.update({alias: state[source] for alias, source in data.tied.items() if source in state})
    try:
        model.load_state_dict(state, strict=True, assign=True)  # assign: every tensor keeps its stored dtype
    except RuntimeError as exc:
        raise RebuildError(" ".join(str(exc).split())) from exc
    _tie(model, data.tied)  # assign gave each alias a Parameter of its own
    for name, tensor in loose.items():
        _place(model, name, tensor, data.tensors[name][0])
    _check_complete(model)
    _check_targets(model, data)
    model.graph = data.graph  # generates forward from the checked nodes
    return model.eval()


def _pop(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in state:
        raise RebuildError(f"no stored tensor for {name}")
    return state.pop(name)


def _place(root: nn.Module, name: str, value: nn.Module | torch.Tensor, kind: str) -> None:
    """Put ``value`` at the dotted ``name``, creating empty container modules on the way."""
    *path, leaf = name.split(".")
    owner = root
    for part in path:
        child = dict(owner.named_children()).get(part)
        if child is None:
            if hasattr(owner, part):
                raise RebuildError(f"{name!r}: {part!r} is already an attribute of its owner, not a layer")
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    try:
        if kind == MODULE and isinstance(value, nn.Module):
            owner.add_module(leaf, value)
        elif kind == PARAMETER and isinstance(value, torch.Tensor):
            owner.register_parameter(leaf, value if isinstance(value, nn.Parameter) else nn.Parameter(value))
        elif kind in (BUFFER, TRANSIENT) and isinstance(value, torch.Tensor):
            owner.register_buffer(leaf, value, persistent=kind == BUFFER)
        elif kind == CONSTANT and isinstance(value, torch.Tensor) and _free(owner, leaf):
            setattr(owner, leaf, value)
        else:
            raise RebuildError(f"{name!r} cannot hold a {kind}")
    except KeyError as exc:  # torch refuses a name that is already an attribute
        raise RebuildError(f"{name!r}: {exc.args[0]}") from exc


def _free(owner: nn.Module, leaf: str) -> bool:
    """A plain attribute may take ``leaf`` (a constant never replaces a method or a module's own field)."""
    return not hasattr(owner, leaf) or isinstance(getattr(owner, leaf), torch.Tensor)


def _tie(root: nn.Module, tied: Mapping[str, str]) -> None:
    """Make every alias the very tensor of the name it shares."""
    parameters = dict(root.named_parameters(remove_duplicate=False))
    buffers = dict(root.named_buffers(remove_duplicate=False))
    for alias, source in tied.items():
        if source in parameters:
            _place(root, alias, parameters[source], PARAMETER)
        elif source in buffers:
            _place(root, alias, buffers[source], BUFFER)
        else:
            raise RebuildError(f"{alias!r} is tied to {source!r}, which is no parameter or buffer")


def _check_complete(model: nn.Module) -> None:
    """Every tensor came from the file: none is left on the meta device."""
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise RebuildError(f"no stored tensor for {', '.join(empty[:5])}")


def _check_targets(model: fx.GraphModule, data: GraphData) -> None:
    """``get_attr`` reads a tensor or a module of the model and ``call_module`` calls a rebuilt layer (or a
    layer inside one), nothing else."""
    layers = dict(model.named_modules(remove_duplicate=False))
    tensors = {name for name, _ in [*model.named_parameters(remove_duplicate=False),
                                    *model.named_buffers(remove_duplicate=False)]}
    for node in data.graph.nodes:
        target = str(node.target)
        rebuilt = any(target == name or target.startswith(name + ".") for name in data.modules)
        if node.op == NodeOp.CALL_MODULE.value and not (rebuilt and target in layers):
            raise RebuildError(f"node {node.name!r} calls {target!r}, which is not a layer of the model")
        if node.op == NodeOp.GET_ATTR.value and target not in layers and target not in tensors \
                and not isinstance(_attribute(model, target), torch.Tensor):
            raise RebuildError(f"node {node.name!r} reads {target!r}, which is not a tensor or layer of the model")


def _attribute(model: nn.Module, target: str) -> object:
    return attribute_at(model, target)
