"""What a package's ``graph.json`` may name: the functions, tensor methods, attributes and layers it runs.

A graph is data; loading it runs only what this table allows. A function is written as ``namespace.name``
and resolved by looking ``name`` up in the namespace's module object (never by importing a string), then
checking the object it finds *by identity*: against the native ATen ops (``torch.relu``), the Python ops of
``torch.functional`` (``torch.einsum``), the functions of ``torch.nn.functional``, a fixed set of
``operator`` functions, ``getattr`` and the two asserts fx writes. Everything else is refused: ``torch.load``
and ``torch.save`` (not ops), ``torch.from_file`` (maps a file), ``os.system``, ``builtins.eval``,
``operator.methodcaller``, any other module.

>>> import torch.nn.functional as F
>>> function_name(F.relu), resolve_function("torch.nn.functional.relu") is F.relu
('torch.nn.functional.relu', True)
>>> resolve_function("os.system") is None, resolve_function("torch.load") is None
(True, True)
"""

from __future__ import annotations

import builtins
import keyword
import operator
import re
import types
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeGuard

import torch
import torch.functional
import torch.fx._symbolic_trace
import torch.nn.functional
from torch import nn

from hetsurgery.export.modules import ARGS


class Namespace(Enum):
    """The modules a graph's functions may come from; the value is how ``graph.json`` spells them."""

    TORCH = "torch"
    FUNCTIONAL = "torch.nn.functional"
    OPERATOR = "operator"
    BUILTINS = "builtins"


# native ATen ops that reach outside tensor memory
_TORCH_REFUSED = frozenset({"from_file"})  # reads, and with shared=True writes, any file
_OPERATORS = frozenset({
    "abs", "add", "and_", "concat", "contains", "eq", "floordiv", "ge", "getitem", "gt", "iadd", "iand",
    "iconcat", "ifloordiv", "ilshift", "imatmul", "imod", "imul", "index", "inv", "invert", "ior", "ipow",
    "irshift", "is_", "is_not", "isub", "itruediv", "ixor", "le", "lshift", "lt", "matmul", "mod", "mul", "ne",
    "neg", "not_", "or_", "pos", "pow", "rshift", "setitem", "sub", "truediv", "truth", "xor",
})  # not attrgetter, methodcaller or call: they reach any attribute or call any object
_BUILTINS = frozenset({"getattr", "dict", "tuple"})  # fx writes ``x.shape`` as getattr(x, "shape"); outputs
# functions outside the namespaces that fx writes for asserts in a traced forward
_ASSERTS: Mapping[str, Callable[..., Any]] = types.MappingProxyType({
    "torch._assert": torch._assert,
    "torch.fx._symbolic_trace._assert_is_none": torch.fx._symbolic_trace._assert_is_none,
})

# the attributes ``getattr`` may read: tensor data and metadata, never methods, storage or autograd nodes
TENSOR_ATTRIBUTES = frozenset({
    "H", "T", "data", "device", "dtype", "imag", "is_cuda", "is_meta", "is_quantized", "is_sparse", "itemsize",
    "layout", "mH", "mT", "nbytes", "ndim", "real", "requires_grad", "shape",
    "values", "indices",  # the fields of what torch.max / min (with a dim) return
})
# tensor methods that reach outside the tensor: its storage (``storage().type("pkg.mod")`` imports a
# module), numpy, shared memory, hooks and methods that call Python callables
_METHODS_REFUSED = frozenset({
    "apply_", "backward", "map2_", "map_", "numpy", "pin_memory", "register_hook",
    "register_post_accumulate_grad_hook", "share_memory_", "storage", "untyped_storage",
})


def _native(table: object, name: str, obj: object) -> bool:
    return getattr(table, name, None) is obj


def _torch_op(name: str, obj: object) -> bool:
    if name in _TORCH_REFUSED:
        return False
    python_op = name in torch.functional.__all__ and vars(torch.functional).get(name) is obj  # einsum, split
    return _native(torch._C._VariableFunctions, name, obj) or python_op


def _functional(name: str, obj: object) -> bool:
    defined_here = isinstance(obj, types.FunctionType) and obj.__module__ == torch.nn.functional.__name__
    native = _native(torch._C._nn, getattr(obj, "__name__", ""), obj)  # F.logsigmoid is _nn.log_sigmoid
    return defined_here or native or _torch_op(name, obj)


_ROOTS: Mapping[Namespace, tuple[types.ModuleType, Callable[[str, object], bool]]] = types.MappingProxyType({
    Namespace.TORCH: (torch, _torch_op),
    Namespace.FUNCTIONAL: (torch.nn.functional, _functional),
    Namespace.OPERATOR: (operator, lambda name, obj: name in _OPERATORS),
    Namespace.BUILTINS: (builtins, lambda name, obj: name in _BUILTINS),
})


def resolve_function(text: str) -> Callable[..., Any] | None:
    """The allowed function ``text`` names (``"torch.nn.functional.relu"``), or ``None`` when it is not allowed."""
    if text in _ASSERTS:
        return _ASSERTS[text]
    prefix, _, name = text.rpartition(".")
    namespace = next((ns for ns in Namespace if ns.value == prefix), None)
    if namespace is None or not name.isidentifier() or name.startswith("_"):
        return None
    module, allowed = _ROOTS[namespace]
    obj = vars(module).get(name)  # the module's own dict: no lazy import through a module __getattr__
    return obj if callable(obj) and allowed(name, obj) else None


def function_name(fn: object) -> str | None:
    """How ``graph.json`` names the allowed function ``fn``; ``None`` when ``fn`` is not allowed."""
    for text, known in _ASSERTS.items():
        if fn is known:
            return text
    own = str(getattr(fn, "__name__", ""))
    for namespace in Namespace:
        module, _ = _ROOTS[namespace]
        names = [own] if vars(module).get(own) is fn else [k for k, v in vars(module).items() if v is fn]
        for name in names:
            if resolve_function(text := f"{namespace.value}.{name}") is fn:
                return text
    return None


def method_allowed(name: str) -> bool:
    """Whether ``x.name(...)`` may run: a public method of ``torch.Tensor`` that stays inside tensors."""
    if not name.isidentifier() or name.startswith("_") or name in _METHODS_REFUSED:
        return False
    return callable(getattr(torch.Tensor, name, None))


def layer_class(name: object) -> type[nn.Module] | None:
    """The ``torch.nn`` class named ``name`` when a package may rebuild it (the table of ``modules.ARGS``)."""
    return next((cls for cls in ARGS if cls.__name__ == name), None)


# one part of a dotted module or tensor name: an identifier or a Sequential index, never a dunder
_NAME_PART = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def is_dotted_name(text: object) -> TypeGuard[str]:
    """``layers.0.weight``: parts that are identifiers or indices (no dunders, quotes or spaces)."""
    return isinstance(text, str) and all(_NAME_PART.fullmatch(part) for part in text.split("."))


def is_identifier(text: object) -> TypeGuard[str]:
    """A Python name fx may write into generated code (not a keyword)."""
    return isinstance(text, str) and text.isidentifier() and not keyword.iskeyword(text)
