"""``program_root``: a module tree for an ``ExportedProgram`` given without its model.

The program holds its parameters and buffers under their fully-qualified names (``state_dict`` and
``constants``) but no module objects. The root made here puts each tensor at its name (empty container
modules on the way, buffers as persistent as they were) and, where a call in the graph is the forward of
a layer ``export_layers`` knows (its class named by the call's ``nn_module_stack``), a layer of that class
built from the call's arguments and holding the program's tensors. ``normalise`` then writes those calls
as ``call_module``, as it does for a model exported by ``trace``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from hetsurgery.ir.structure import owner_of
from hetsurgery.tracing.aten_table import bind
from hetsurgery.tracing.export_layers import LAYERS, Layer, layer_class, module_class, module_path


def program_root(ep: ExportedProgram) -> nn.Module:
    """A module holding ``ep``'s tensors at their names, with the layers its calls are made of."""
    tensors: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> (tensor, persistent)
    by_arg: dict[str, torch.Tensor] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind is InputKind.PARAMETER or (spec.kind is InputKind.BUFFER and spec.persistent):
            t = ep.state_dict[str(spec.target)]
        elif spec.kind is InputKind.BUFFER:
            t = ep.constants[str(spec.target)]
        else:
            continue
        tensors[str(spec.target)] = (t, spec.kind is InputKind.PARAMETER or bool(spec.persistent))
        by_arg[spec.arg.name] = t
    root = nn.Module()
    for path, mod in _layers(ep.graph_module, by_arg, tensors).items():
        _module_at(root, path, mod)
    for name, (t, persistent) in tensors.items():
        owner_path, _, leaf = name.rpartition(".")
        owner = _module_at(root, owner_path, None)
        if getattr(owner, leaf, None) is t:
            continue
        if isinstance(t, nn.Parameter):
            owner.register_parameter(leaf, t)
        else:
            owner.register_buffer(leaf, t, persistent=persistent)
    return root.eval()  # the program is one forward in one mode: its BatchNorm calls read the running statistics


def _layers(gm: fx.GraphModule, by_arg: Mapping[str, torch.Tensor],
            tensors: Mapping[str, tuple[torch.Tensor, bool]]) -> dict[str, nn.Module]:
    """A layer per path whose first call is the forward of a layer class ``export_layers`` knows."""
    out: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        layer = LAYERS.get(node.target) if node.op == "call_function" else None
        path = module_path(node)
        if layer is None or path is None or path in out:
            continue
        cls = layer_class(layer, module_class(node))
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: by_arg.get(n.name, n))
        bound = bind(node.target, args, kwargs)
        mod = _built(layer, cls, bound, path, tensors) if cls is not None else None
        if mod is not None:
            out[path] = mod
    return out


def _built(layer: Layer, cls: type[nn.Module], bound: Mapping[str, object], path: str,
           tensors: Mapping[str, tuple[torch.Tensor, bool]]) -> nn.Module | None:
    """The layer for one call, holding the program's tensors; ``None`` when it cannot hold exactly them."""
    if any(isinstance(bound.get(name), fx.Node) for name, _ in layer.tensors):
        return None  # a tensor computed in the graph: not a layer's own
    try:
        mod = layer.build(bound, cls)
        if mod is None:
            return None
        for name, attr in layer.tensors:
            if bound.get(name) is not None:
                setattr(mod, attr, bound[name])
        for leaf, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            if t.is_meta:  # held by the layer but not passed to the call (a BatchNorm's num_batches_tracked)
                given = tensors.get(f"{path}.{leaf}")
                if given is None:
                    return None
                setattr(mod, leaf, given[0])
    except (TypeError, ValueError, KeyError):  # a tensor of the wrong kind for the attribute
        return None
    own = {f"{path}.{n}" for n, _ in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]}
    under = {n for n in tensors if n.startswith(path + ".")}
    return mod if under <= own and layer.matches(mod, bound) else None


def _module_at(root: nn.Module, path: str, mod: nn.Module | None) -> nn.Module:
    """The module at ``path`` (``mod`` put there when given), empty container modules made on the way."""
    if not path:
        return root
    owner, leaf = owner_of(root, path, make=True)
    if mod is not None:
        owner.add_module(leaf, mod)
    elif not hasattr(owner, leaf):
        owner.add_module(leaf, nn.Module())
    return getattr(owner, leaf)
