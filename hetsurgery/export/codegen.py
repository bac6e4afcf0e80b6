"""Generate a package's ``model.py``: the fx ``forward`` plus a constructor that rebuilds the layers.

The file imports only ``torch`` and ``safetensors`` (and the standard library): the model loads without
hetsurgery and without the class it was traced from. Layers are rebuilt from their class name and
constructor arguments; tensors owned by no layer (a positional embedding) are declared by shape; tensors
that several names share (tied weights) are stored once in ``model.safetensors`` and tied again on load.

>>> import torch, hetsurgery as hs
>>> gm = hs.to_module(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)))
>>> print(layout_of(gm).modules["layers.0"])
('Linear', {'in_features': 4, 'out_features': 8})
"""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import inspect
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from hetsurgery.errors import ExportError
from hetsurgery.export.modules import constructor_args

InputSpec = tuple[tuple[int, ...], str]  # one example input: (shape, dtype name)
TensorSpec = tuple[str, tuple[int, ...], str]  # kind, shape, dtype name

# kinds of tensors that no rebuilt layer owns
PARAMETER, BUFFER, TRANSIENT, CONSTANT = "parameter", "buffer", "transient buffer", "constant"
# an annotation model.py can evaluate as it stands (torch is imported)
_TORCH_NAME = re.compile(r"torch(\.[A-Za-z_][A-Za-z0-9_]*)+")
# packages the generated forward may import from (anything else would make model.py depend on it)
_IMPORTABLE = ("torch", "math", "operator", "builtins", "typing", "collections", "functools", "itertools")


@dataclass(frozen=True)
class Layout:
    """What ``model.py`` declares and ``model.safetensors`` stores for one ``GraphModule``.

    ``modules``: dotted name -> (torch.nn class, constructor arguments); ``tensors``: tensors outside those
    layers; ``tied``: alias -> the stored name it shares a tensor with; ``stored``: the tensors to write.
    """

    modules: Mapping[str, tuple[str, dict[str, Any]]]
    tensors: Mapping[str, TensorSpec]
    tied: Mapping[str, str]
    stored: Mapping[str, torch.Tensor]


def layout_of(gm: fx.GraphModule) -> Layout:
    """The layers, loose tensors and ties of ``gm``; ``ExportError`` when a layer cannot be rebuilt."""
    leaves = list(dict.fromkeys(str(n.target) for n in gm.graph.nodes if n.op == "call_module"))  # call order
    leaves = [name for name in leaves if not any(name.startswith(other + ".") for other in leaves)]
    modules = {name: constructor_args(gm.get_submodule(name), name) for name in leaves}

    def in_layer(tensor_name: str) -> bool:
        return any(tensor_name.startswith(layer + ".") for layer in leaves)

    named = _named_tensors(gm)
    first_name: dict[int, str] = {}
    tied: dict[str, str] = {}
    tensors: dict[str, TensorSpec] = {}
    stored: dict[str, torch.Tensor] = {}
    storages: set[tuple[str, int]] = set()
    for name, (kind, t) in named.items():
        if id(t) in first_name:
            tied[name] = first_name[id(t)]
            continue
        first_name[id(t)] = name
        if not in_layer(name) or kind in (TRANSIENT, CONSTANT):
            tensors[name] = (kind, tuple(t.shape), dtype_name(t.dtype))
        data = t.detach().to("cpu").contiguous()
        key = (str(data.device), data.untyped_storage().data_ptr())
        stored[name] = data.clone() if key in storages and data.numel() else data  # safetensors refuses aliases
        storages.add(key)
    return Layout(modules, tensors, tied, stored)


def _named_tensors(gm: fx.GraphModule) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor the model holds, in ``state_dict`` order, with its kind; shared tensors under each name."""
    persistent = set(gm.state_dict(keep_vars=True))
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for name, t in gm.state_dict(keep_vars=True).items():
        out[name] = (PARAMETER if isinstance(t, torch.nn.Parameter) else BUFFER, t)
    for name, t in gm.named_buffers(remove_duplicate=False):
        if name not in persistent:
            out[name] = (TRANSIENT, t)
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in out:
            owner, _, leaf = str(node.target).rpartition(".")
            value = getattr(gm.get_submodule(owner), leaf)
            if isinstance(value, torch.Tensor):
                out[str(node.target)] = (CONSTANT, value)
            elif not isinstance(value, torch.nn.Module):
                raise ExportError(f"node {node.name} reads {node.target!r}, a {type(value).__name__}; model.py can "
                                  "only hold tensors and layers")
    return out


def versions() -> str:
    """``hetsurgery 0.1.0, torch 2.x``: what wrote a package."""
    try:
        own = importlib.metadata.version("hetsurgery")
    except importlib.metadata.PackageNotFoundError:
        own = "(not installed)"
    return f"hetsurgery {own}, torch {torch.__version__}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_source(gm: fx.GraphModule, layout: Layout, inputs: Sequence[InputSpec], title: str) -> str:
    """The text of ``model.py`` for ``gm`` (see the module docstring)."""
    code = gm.graph.python_code(root_module="self")
    forward = _inline_annotations(textwrap.dedent(code.src).strip("\n"), code.globals)
    used = {n.id for n in ast.walk(ast.parse(forward)) if isinstance(n, ast.Name)}
    imports = [line for name in sorted(used & set(code.globals)) if (line := _global(name, code.globals[name]))]
    return _TEMPLATE.format(
        title=title, versions=versions(),
        imports="".join(f"{line}\n" for line in imports) + ("\n" if imports else ""),
        modules=_table(layout.modules), tensors=_table(layout.tensors), tied=_table(layout.tied),
        inputs=repr(list(inputs)),
        forward=textwrap.indent(forward, "    "),
    )


def _inline_annotations(forward: str, names: Mapping[str, object]) -> str:
    """Write string annotations in place: ``x : _torch_Tensor_`` (a global holding "torch.Tensor") becomes
    ``x : torch.Tensor``; a string that is not a ``torch.`` name stays a quoted, never-evaluated annotation."""
    tree = ast.parse(forward)
    spots = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
            spots += [a.annotation for a in args if a is not None and a.annotation is not None]
            spots += [node.returns] if node.returns is not None else []
    lines = forward.split("\n")
    # right to left, bottom to top: earlier offsets stay valid while later text changes length
    for spot in sorted(spots, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        text = names.get(spot.id) if isinstance(spot, ast.Name) else None
        if not isinstance(text, str) or spot.lineno != spot.end_lineno or spot.end_col_offset is None:
            continue
        plain = text if _TORCH_NAME.fullmatch(text) else repr(text)
        row = lines[spot.lineno - 1]
        lines[spot.lineno - 1] = row[:spot.col_offset] + plain + row[spot.end_col_offset:]
    return "\n".join(lines)


def _table(rows: Mapping[str, object]) -> str:
    """A dict literal with one entry per line."""
    return "{" + "".join(f"\n    {key!r}: {value!r}," for key, value in rows.items()) + ("\n}" if rows else "}")


def _global(name: str, obj: object) -> str | None:
    """The import or assignment that gives the generated forward the global ``name``."""
    if getattr(builtins, name, None) is obj or (name == "torch" and obj is torch):  # the template imports torch
        return None
    if isinstance(obj, (str, int, bool)):
        return f"{name} = {obj!r}"
    if isinstance(obj, float):
        return f"{name} = float({str(obj)!r})"  # inf and nan have no literal
    if obj is type(None):
        return f"{name} = type(None)"
    if inspect.ismodule(obj):
        _check_importable(obj.__name__, name)
        return f"import {obj.__name__}" if name == obj.__name__ else f"import {obj.__name__} as {name}"
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module and qualname and "<" not in qualname:
        _check_importable(module, name)
        if "." in qualname:
            return f"import {module} as _{name}_module\n{name} = _{name}_module.{qualname}"
        return f"from {module} import {qualname}" + ("" if qualname == name else f" as {name}")
    raise ExportError(f"the forward uses {name!r} ({obj!r}), which model.py cannot import")


def _check_importable(module: str, name: str) -> None:
    if module.split(".")[0] not in _IMPORTABLE:
        raise ExportError(f"the forward calls {name!r} from {module}; model.py may only import torch and the "
                          "standard library. Trace with that function inlined, or keep it out of the model.")


_TEMPLATE = '''\
"""{title}

Generated by hetsurgery.export.save ({versions}); needs only torch and safetensors:

    import model                     # run next to this file, or put the folder on sys.path
    net = model.load()               # weights from model.safetensors beside this file
    y = net(*model.example_inputs())
"""

import pathlib

import safetensors.torch
import torch

{imports}__all__ = ["Model", "example_inputs", "load"]

# layer name -> (torch.nn class, constructor arguments that differ from the defaults)
MODULES = {modules}

# tensors that belong to no layer above: name -> (kind, shape, dtype)
TENSORS = {tensors}

# names that share the tensor stored under another name (tied weights)
TIED = {tied}

# the example inputs the model was saved with: (shape, dtype)
EXAMPLE_INPUTS = {inputs}


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, (cls, kwargs) in MODULES.items():
            _place(self, name, getattr(torch.nn, cls)(**kwargs))
        for name, (kind, shape, dtype) in TENSORS.items():
            _place(self, name, torch.empty(shape, dtype=getattr(torch, dtype)), kind)
        _tie(self)

{forward}


def load(folder: "str | pathlib.Path | None" = None, device: "str | torch.device" = "cpu") -> Model:
    """The model with the weights of ``model.safetensors`` (beside this file unless ``folder``), in eval mode."""
    folder = pathlib.Path(__file__).resolve().parent if folder is None else pathlib.Path(folder)
    # clone: fresh, aligned memory (kernels may round by alignment)
    state = {{name: t.clone() for name, t in safetensors.torch.load_file(str(folder / "model.safetensors")).items()}}
    loose = {{name: state.pop(name) for name, (kind, _, _) in TENSORS.items() if kind in ("transient buffer", "constant")}}
    state.update({{alias: state[source] for alias, source in TIED.items() if source in state}})
    model = Model()
    model.load_state_dict(state, strict=True, assign=True)  # assign: every tensor keeps its stored dtype
    _tie(model)  # assign gave each alias a Parameter of its own
    for name, tensor in loose.items():
        _place(model, name, tensor, TENSORS[name][0])
    return model.to(device).eval()


def example_inputs(batch: "int | None" = None) -> "tuple[torch.Tensor, ...]":
    """Random inputs of the saved shapes (integer inputs are zeros); ``batch`` replaces the batch size."""
    out = []
    for shape, dtype in EXAMPLE_INPUTS:
        shape = (batch, *shape[1:]) if batch is not None else shape
        kind = getattr(torch, dtype)
        out.append(torch.randn(shape, dtype=kind) if kind.is_floating_point else torch.zeros(shape, dtype=kind))
    return tuple(out)


def _tie(root: torch.nn.Module) -> None:
    """Make every name of TIED the very tensor of the name it shares."""
    for alias, source in TIED.items():
        kind = "parameter" if source in dict(root.named_parameters()) else "buffer"
        _place(root, alias, root.get_parameter(source) if kind == "parameter" else root.get_buffer(source), kind)


def _place(root: torch.nn.Module, name: str, value: "torch.nn.Module | torch.Tensor", kind: str = "module") -> None:
    """Put ``value`` at the dotted ``name``, creating empty container modules on the way."""
    *path, leaf = name.split(".")
    owner = root
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    if kind == "module":
        owner.add_module(leaf, value)
    elif kind == "parameter":
        owner.register_parameter(leaf, value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value))
    elif kind in ("buffer", "transient buffer"):
        owner.register_buffer(leaf, value, persistent=kind == "buffer")
    else:
        setattr(owner, leaf, value)
'''
