"""The inputs of an fx graph: placeholder names, and the inputs torch.fx fixed with ``concrete_args`` dropped.

torch.fx keeps a placeholder for every ``concrete_args`` entry, guarded by an assert that the value given at
run time is the one traced with (``torch._assert(pool_1 == "mean")``, ``_assert_is_none(inputs_embeds_1)``).
Called with the tensors only, the graph would assert on the defaults; the traced graph takes exactly the
tensors the example gave, so those placeholders and their asserts go.

>>> import torch
>>> from torch import fx
>>> class Net(torch.nn.Module):
...     def forward(self, x, scale=None, pool="max"):
...         return x if scale is None and pool == "mean" else -x
>>> graph = fx.Tracer().trace(Net(), concrete_args={"scale": None, "pool": "mean"})
>>> [n.name for n in graph.nodes if n.op == "placeholder"]
['x', 'scale_1', 'pool_1']
>>> drop_fixed_inputs(graph)
>>> [n.op for n in graph.nodes]
['placeholder', 'output']
"""

from __future__ import annotations

import operator

import torch
import torch.fx._symbolic_trace
from torch import fx

_CHECKS = (torch._assert, torch.fx._symbolic_trace._assert_is_none)


def placeholder_names(gm: fx.GraphModule) -> tuple[str, ...]:
    return tuple(str(n.target) for n in gm.graph.nodes if n.op == "placeholder")


def drop_fixed_inputs(graph: fx.Graph) -> None:
    """Erase the placeholders read only by fx's asserts on concrete arguments (and unused ``*args``/``**kwargs``)."""
    for ph in [n for n in graph.nodes if n.op == "placeholder"]:
        checks = _checks_of(ph)
        if checks is not None and (checks or str(ph.target).startswith("*")):
            for node in reversed([ph, *checks]):
                graph.erase_node(node)


def _checks_of(ph: fx.Node) -> list[fx.Node] | None:
    """The assert nodes (and the comparisons they read) that are all that reads ``ph``; ``None`` if more does."""
    found: list[fx.Node] = []
    for user in ph.users:
        if user.target in _CHECKS:
            found.append(user)
        elif user.target is operator.eq and user.users and all(u.target is torch._assert for u in user.users):
            found += [user, *user.users]
        else:
            return None
    return found
