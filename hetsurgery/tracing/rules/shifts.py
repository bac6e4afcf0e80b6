"""Rules for ops that move values along dims or extend them: torch.roll and F.pad.

Rolling or padding dims without channels leaves the channels alone (Swin's shifted windows). Padding the
channel dim with a constant (ResNet's option-A shortcut) adds channels that all hold that constant: any
order of them is the same tensor, so they form a group of their own, whose width the call spells.

>>> import torch, torch.nn.functional as F, hetsurgery as hs
>>> class OptionA(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b, self.c = torch.nn.Conv2d(1, 4, 1), torch.nn.Conv2d(4, 8, 1), torch.nn.Linear(8, 2)
...     def forward(self, x):
...         h = self.a(x)
...         return self.c((self.b(h) + F.pad(h, (0, 0, 0, 0, 2, 2))).mean((2, 3)))
>>> g = hs.trace(OptionA(), torch.randn(2, 1, 4, 4))
>>> [(grp.label, grp.size, grp.perm_ok, grp.pad_ok) for grp in g.groups]
[('a (+1)', 4, True, True), ('b[0:2] (+1)', 2, True, False), ('b[6:8] (+1)', 2, True, False), ('c', 2, False, False)]
"""

from __future__ import annotations

from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import arg, norm_dim, rank, value
from hetsurgery.tracing.values import Chan, Heads, Param, Seg, Value, channel_dims


def roll(lx: Lifter, node: fx.Node) -> Value:
    """``torch.roll(x, shifts, dims)``: a cyclic shift along dims that must not carry channels."""
    src = node.args[0]
    x = value(lx, src)
    if isinstance(x, Param):
        return lx.give_up([x], f"rolling a parameter at node {node.name}")
    if not isinstance(x, (Chan, Heads)):
        return x
    dims = arg(node, 2, "dims")
    if dims is None:  # the flattened tensor rolls: channels move into each other
        return lx.give_up([x], f"a roll of the flattened tensor at node {node.name}")
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    if any(not isinstance(d, int) or norm_dim(d, rank(src)) in channel_dims(x) for d in dims):
        return lx.give_up([x], f"a roll along the channel dim at node {node.name}")
    return x


def pad(lx: Lifter, node: fx.Node, x: Chan | Heads) -> Value:
    """``F.pad(x, pad, mode, value)``: dims padded by 0 are untouched; a constant pad of the channel dim adds a
    group of equal channels before and after it."""
    amounts = list(arg(node, 1, "pad"))
    r = rank(node.args[0])
    padded = {r - 1 - i // 2: (amounts[i], amounts[i + 1]) for i in range(0, len(amounts), 2)}
    padded = {d: p for d, p in padded.items() if p != (0, 0)}
    touched = [d for d in padded if d in channel_dims(x)]
    if not touched:
        return x
    mode = arg(node, 2, "mode", "constant")
    before, after = padded[touched[0]]
    if not isinstance(x, Chan) or mode != "constant" or not all(isinstance(p, int) and p >= 0 for p in (before, after)):
        return lx.give_up([x], f"padding of the channel dim ({mode}) at node {node.name}")
    placed = [(seg, at + before) for seg, at in x.offsets()]
    for extent, at in ((before, 0), (after, before + x.width)):
        if extent:
            fresh = lx.new_var(extent, node)
            lx.fix_width([fresh], f"F.pad at node {node.name} spells {extent} padded channels")
            placed.append((Seg(fresh, extent), at))
    return Chan.placed(x.dim, placed)
