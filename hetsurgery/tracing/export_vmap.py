"""Regions of an exported graph that run under ``torch.vmap``, made one call of a submodule each.

Under ``torch.export`` a ``torch.vmap`` becomes a run of calls that change functorch's global nesting level
(``_vmap_increment_nesting`` ... ``_add_batch_dim`` ... ``_remove_batch_dim`` ... ``_vmap_decrement_nesting``);
transformers 4.57 builds every attention mask this way. The calls are right only in that order, with
nothing else vmapped in between: a graph that runs two models node by node (``plan.joint``) would nest one
model's vmap inside the other's. ``outline_vmaps`` moves each such region (from the call that enters the
first level to the one that leaves the last) into a submodule ``_vmap<i>`` called once, so it runs whole.
The region computes masks from sizes and the attention mask, never a channel: the lifter sees a call that no
group reaches.

>>> import torch
>>> from torch import fx
>>> def mask(n):
...     return torch.vmap(lambda i: i <= torch.arange(n.shape[0]))(torch.arange(n.shape[0]))
>>> class Net(torch.nn.Module):
...     def forward(self, x):
...         return x * mask(x)[..., None]
>>> ep = torch.export.export(Net(), (torch.randn(3, 2),), strict=False)
>>> from hetsurgery.tracing.export_front import normalise
>>> gm, _ = normalise(ep, torch.nn.Module(), "Net")
>>> [n.target for n in gm.graph.nodes if n.op == "call_module"]
['_vmap0']
>>> x = torch.randn(3, 2)
>>> torch.equal(gm(x), Net()(x))
True
"""

from __future__ import annotations

import operator

import torch._functorch.predispatch as predispatch
from torch import fx, nn

VMAP_REGION = "hetsurgery_vmap_region"  # attribute of the submodules holding a vmap region
_ENTER = predispatch._vmap_increment_nesting
_LEAVE = predispatch._vmap_decrement_nesting


def outline_vmaps(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with every top-level vmap region a call of its own submodule (changed in place; returned)."""
    for i, region in enumerate(_regions(gm.graph)):
        _outline(gm, region, f"_vmap{i}")
    gm.graph.lint()
    gm.recompile()
    return gm


def _regions(graph: fx.Graph) -> list[list[fx.Node]]:
    """Runs of nodes from entering the first vmap level to leaving the last, in graph order."""
    out: list[list[fx.Node]] = []
    depth, current = 0, []
    for node in graph.nodes:
        if node.target is _ENTER:
            depth += 1
        if depth:
            current.append(node)
        if node.target is _LEAVE:
            depth -= 1
            if depth == 0:
                out.append(current)
                current = []
    return out


def _outline(gm: fx.GraphModule, region: list[fx.Node], name: str) -> None:
    inside = set(region)
    inputs = list(dict.fromkeys(a for n in region for a in n.all_input_nodes if a not in inside))
    outputs = [n for n in region if any(u not in inside for u in n.users)]
    sub, env = fx.Graph(), {}
    for a in inputs:
        env[a] = sub.placeholder(a.name)
    holder = nn.Module()
    for n in region:
        if n.op == "get_attr":  # a constant a call in the region takes (flat_apply's TreeSpec)
            setattr(holder, str(n.target), getattr(gm, str(n.target)))
        env[n] = sub.node_copy(n, env.__getitem__)
    sub.output(tuple(env[o] for o in outputs))
    module = fx.GraphModule(holder, sub, name)
    module.meta[VMAP_REGION] = True  # meta survives the deep copies attributes do not
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(region[0]):
        call = gm.graph.call_module(name, tuple(inputs))
        items = [gm.graph.call_function(operator.getitem, (call, k)) for k in range(len(outputs))]
    for old, new in zip(outputs, items, strict=True):
        old.replace_all_uses_with(new, delete_user_cb=lambda user: user not in inside)
    for n in reversed(region):
        gm.graph.erase_node(n)
