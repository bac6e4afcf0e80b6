"""The arguments of fx nodes and layers as JSON: literals stay literals, everything else is a tagged object.

``None``, booleans, integers, finite floats and strings are JSON values; a list is a JSON array. Other
values are an object with one tag: ``{"node": "relu"}`` (the value of an earlier node), ``{"tuple": [...]}``,
``{"dict": [[key, value], ...]}``, ``{"slice": [start, stop, step]}``, ``{"ellipsis": null}``,
``{"float": "inf"}``, ``{"dtype": "float16"}``, ``{"device": "cuda:0"}``, ``{"memory_format":
"channels_last"}``, ``{"layout": "strided"}``, ``{"size": [2, 3]}``. Decoding builds only these types.

>>> import torch
>>> encode((1, slice(None, 2), torch.float16, float("inf")))
{'tuple': [1, {'slice': [None, 2, None]}, {'dtype': 'float16'}, {'float': 'inf'}]}
>>> decode(encode((1, slice(None, 2), torch.float16, float("inf"))), lambda name: name)
(1, slice(None, 2, None), torch.float16, inf)
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx


class GraphValueError(ValueError):
    """A value ``graph.json`` cannot hold (when writing) or a tagged object it does not know (when reading)."""


NodeLookup = Callable[[str], Any]  # a node's name -> the fx node (or whatever stands for it)


def encode(value: object) -> Any:
    """The JSON form of an argument (see the module docstring); ``GraphValueError`` for any other type."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": None}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    for tag, kind in _TORCH_CONSTANTS.items():
        if isinstance(value, kind):
            return {tag: str(value).removeprefix("torch.")}
    raise GraphValueError(f"a {type(value).__module__}.{type(value).__qualname__} ({value!r:.80})")


def decode(raw: Any, node: NodeLookup) -> Any:
    """The value ``raw`` encodes; ``node(name)`` gives the value of ``{"node": name}``."""
    if raw is None or isinstance(raw, (bool, int, str)):
        return raw
    if isinstance(raw, float):
        return raw
    if isinstance(raw, list):
        return [decode(v, node) for v in raw]
    if not isinstance(raw, dict) or len(raw) != 1:
        raise GraphValueError(f"{raw!r:.80} is not a value (a literal or an object with one tag)")
    (tag, body), = raw.items()
    return _decoder(tag)(body, node)


def _decoder(tag: object) -> Callable[[Any, NodeLookup], Any]:
    if isinstance(tag, str) and tag in _TORCH_CONSTANTS:
        kind = _TORCH_CONSTANTS[tag]
        return lambda body, node: _torch_constant(_text(body, tag), kind, tag)
    if not isinstance(tag, str) or tag not in _DECODERS:
        raise GraphValueError(f"unknown value tag {tag!r:.40}")
    return _DECODERS[tag]


# torch constants written by name: the name must give an object of this type in the torch module
_TORCH_CONSTANTS: Mapping[str, type] = types.MappingProxyType({
    "dtype": torch.dtype, "memory_format": torch.memory_format, "layout": torch.layout,
})


def _torch_constant(name: str, kind: type, tag: str) -> object:
    value = vars(torch).get(name) if name.isidentifier() else None
    if not isinstance(value, kind):
        raise GraphValueError(f"{name!r:.40} is not a torch {tag}")
    return value


def _device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise GraphValueError(f"{text!r:.40} is not a torch device") from exc


def _text(body: object, tag: str) -> str:
    if not isinstance(body, str):
        raise GraphValueError(f"{tag} takes a string, not {body!r:.40}")
    return body


def _items(body: object, tag: str, length: int | None = None) -> list[Any]:
    if not isinstance(body, list) or (length is not None and len(body) != length):
        raise GraphValueError(f"{tag} takes a list{f' of {length}' if length else ''}, not {body!r:.40}")
    return body


def _pairs(body: object) -> list[list[Any]]:
    items = _items(body, "dict")
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in items):
        raise GraphValueError("dict takes a list of [key, value] pairs")
    return items


def _key(key: object) -> object:
    if key is not None and not isinstance(key, (bool, int, float, str)):
        raise GraphValueError(f"a dict key must be a literal, not {key!r:.40}")
    return key


def _ints(body: object) -> list[int]:
    items = _items(body, "size")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise GraphValueError("size takes a list of integers")
    return items


def _choice(body: object, choices: tuple[str, ...], tag: str) -> str:
    if body not in choices:
        raise GraphValueError(f"{tag} takes one of {', '.join(choices)}, not {body!r:.40}")
    return str(body)


_DECODERS: Mapping[str, Callable[[Any, NodeLookup], Any]] = types.MappingProxyType({
    "node": lambda body, node: node(_text(body, "node")),
    "tuple": lambda body, node: tuple(decode(v, node) for v in _items(body, "tuple")),
    "dict": lambda body, node: {_key(decode(k, node)): decode(v, node) for k, v in _pairs(body)},
    "slice": lambda body, node: slice(*(decode(v, node) for v in _items(body, "slice", 3))),
    "ellipsis": lambda body, node: Ellipsis,
    "float": lambda body, node: float(_choice(body, ("inf", "-inf", "nan"), "float")),
    "device": lambda body, node: _device(_text(body, "device")),
    "size": lambda body, node: torch.Size(_ints(body)),
})
