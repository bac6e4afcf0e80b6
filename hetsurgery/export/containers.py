"""A model's output containers written with the standard library, for packages that need only torch.

A traced forward that returns a dataclass (a Hugging Face ``ModelOutput``) or a namedtuple of another
package builds it with that class; a package's ``model.py`` may import only torch and the standard library,
and its ``graph.json`` names only allow-listed functions. ``plain_outputs`` rewrites those calls: a dataclass
becomes a ``dict`` of the fields it was given (``out["logits"]``), a namedtuple a ``tuple`` in field order.
Classes of torch or the standard library stay as they are.

>>> import dataclasses, torch
>>> @dataclasses.dataclass
... class Out:
...     logits: torch.Tensor
>>> class Net(torch.nn.Module):
...     def forward(self, x):
...         return Out(logits=x * 2)
>>> gm = plain_outputs(torch.fx.symbolic_trace(Net()))
>>> gm(torch.ones(1))
{'logits': tensor([2.])}
"""

from __future__ import annotations

import dataclasses
import sys

from torch import fx

_KEPT = ("torch", *sys.stdlib_module_names)


def plain_outputs(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` itself when no call builds a container of another package, else a copy that builds dicts and
    tuples instead."""
    foreign = [n for n in gm.graph.nodes if n.op == "call_function" and _foreign_container(n.target)]
    if not foreign:
        return gm
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node in foreign:
            cls = node.target
            args = fx.map_arg(node.args, lambda n: env[n])
            kwargs = fx.map_arg(node.kwargs, lambda n: env[n])
            if dataclasses.is_dataclass(cls):
                fields = [f.name for f in dataclasses.fields(cls)]
                given = {**dict(zip(fields, args, strict=False)), **kwargs}
                env[node] = graph.call_function(dict, (), given)
            else:  # a namedtuple: its fields in order
                fields = list(cls._fields)  # type: ignore[attr-defined]
                given = {**dict(zip(fields, args, strict=False)), **kwargs}
                env[node] = graph.call_function(tuple, ([given[f] for f in fields if f in given],))
            env[node].meta = dict(node.meta)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    out = fx.GraphModule(gm, graph, type(gm).__name__)
    return out


def _foreign_container(target: object) -> bool:
    if not isinstance(target, type):
        return False
    container = dataclasses.is_dataclass(target) or (issubclass(target, tuple) and hasattr(target, "_fields"))
    return container and target.__module__.split(".")[0] not in _KEPT
