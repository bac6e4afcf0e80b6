"""Rules for ``max`` / ``min`` (three overloads each) and ``argmax`` / ``argmin``.

``torch.max(a, b)`` is elementwise (the binary rule); ``torch.max(x)`` reduces everything; ``torch.max(x,
dim)`` gives values and indices. Along a dim without channels both keep the channels (the indices are
positions along that dim, per channel); along the channel dim the values are invariant (as ``amax``) but the
indices name channels, so a model that reads them freezes the group.

>>> import torch, hetsurgery as hs
>>> class Pool(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)
...     def forward(self, x):
...         return self.b(torch.max(self.a(x), dim=1).values)
>>> hs.trace(Pool(), torch.randn(2, 5, 3)).coverage()
1.0
"""

from __future__ import annotations

import operator

from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import arg, norm_dim, rank, value
from hetsurgery.tracing.rules.pointwise import after_reduce, binary, reduce
from hetsurgery.tracing.values import Chan, Free, Heads, Items, Param, Value, channel_dims, remap, vars_of

_ARG = frozenset({"argmax", "argmin"})


def extremum(lx: Lifter, node: fx.Node) -> Value:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    other = arg(node, 1, "other" if name not in _ARG else "dim")
    if name not in _ARG and isinstance(other, fx.Node):  # max(a, b): elementwise
        return binary(lx, node)
    src = node.args[0]
    x = value(lx, src)
    if isinstance(x, Param):
        return lx.give_up([x], f"{name} of a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads)):
        return Items((x, x)) if arg(node, 1, "dim") is not None and name not in _ARG else Free(_free_of(x))
    dim = arg(node, 1, "dim")
    if dim is None:
        if name in _ARG:
            return lx.give_up([x], f"{name} over the flattened tensor names channels at node {node.name}")
        return reduce(lx, node)
    r = rank(src)
    d = norm_dim(dim, r)
    keep = bool(arg(node, 2, "keepdim", False))
    if d not in channel_dims(x):
        moved = remap(x, after_reduce(r, [d], keep)) or lx.give_up([x], f"{name} at node {node.name}")
        return moved if name in _ARG else Items((moved, moved))
    if name in _ARG or _reads_indices(node) or not isinstance(x, Chan):
        return lx.give_up([x], f"{name} over the channel dim at node {node.name}: its indices name channels")
    lx.block_pad(vars_of(x), f"{name} over the channels at node {node.name}")
    return Items((Free("reduced over channels"), Free("indices")))


def _reads_indices(node: fx.Node) -> bool:
    """Whether anything but ``[0]`` or ``.values`` is read from the ``(values, indices)`` result."""
    for user in node.users:
        reads = user.args[1] if len(user.args) > 1 else None
        if user.target not in (operator.getitem, getattr) or reads not in (0, "values"):
            return True
    return False


def _free_of(x: object) -> str:
    return x.why if isinstance(x, Free) else "constant"
