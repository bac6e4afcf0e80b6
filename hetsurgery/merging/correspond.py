"""Models put in correspondence unit by unit, then carried onto the anchor's names.

After depth balancing two graphs have the same units in the same order, but their own names: a ResNet-20
with inserted blocks calls its blocks ``layer1.0`` … ``layer1.3`` in an order that is not the ResNet-32's,
and a hand-written model and a ``Sequential`` one name the same layer differently. Nothing here matches by
name or by position in a parameter list: the units are paired by their order in the balanced stages (the
depth plan decided it), and the fx nodes by what they compute. Both graphs are followed from their outputs
back through the arguments of each node, so a pair of nodes is the same op with the same target, the same
layer settings except widths and the same literal arguments, wired to pairs of nodes the same way, in
corresponding units; a node that holds no tensor may stand for several of the anchor's (the same value computed
once per block in one model, once for two blocks in the other). Nodes that hand their input on unchanged (an ``nn.Identity`` shortcut, a dropout of
rate 0, ``contiguous``) are looked through: a block written with ``self.shortcut = nn.Identity()`` and a
zero-residual block derived from a strided one, whose shortcut is bare, compute the same, whatever their node
counts. The model is then rebuilt on the anchor's structure holding its own tensors, under the anchor's
names, and lifted again; its outputs are checked against the model's own.

>>> import torch, hetsurgery as hs
>>> a = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> b = hs.trace(hs.zoo.mlp([8, 6]), torch.randn(2, 64))
>>> on_anchor_names(a, b).params["layers.2.weight"].shape   # b's tensor under a's name
torch.Size([6, 8])
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx, nn

from hetsurgery.errors import MergeInputError, PassError, TracingError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.structure import with_tensors
from hetsurgery.merging.topology import NodeSignature, signature
from hetsurgery.passes import check_same_function
from hetsurgery.tracing import lift_graph


def on_anchor_names(anchor: ModelGraph, g: ModelGraph) -> ModelGraph:
    """``g`` rebuilt on ``anchor``'s structure and names, holding ``g``'s own tensors (its widths)."""
    pairs = paired_nodes(anchor, g)
    a_mods, g_mods = dict(anchor.module.named_modules()), dict(g.module.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    for a_node, g_node in pairs:
        if a_node.op not in ("call_module", "get_attr"):
            continue
        a_target, g_target = str(a_node.target), str(g_node.target)
        if a_node.op == "get_attr" and a_target in anchor.params:
            tensors[a_target] = g.params[g_target]
            continue
        own = {n for n, _ in [*a_mods[a_target].named_parameters(), *a_mods[a_target].named_buffers()]} \
            if a_node.op == "call_module" else set()
        theirs = {n for n, _ in [*g_mods[g_target].named_parameters(), *g_mods[g_target].named_buffers()]} \
            if g_node.op == "call_module" else set()
        if own != theirs:
            raise MergeInputError(f"{g.name}: layer {g_target} holds {sorted(theirs)} but its counterpart {a_target} "
                                  f"in {anchor.name} holds {sorted(own)}")
        for leaf in own:
            tensors[f"{a_target}.{leaf}"] = g.params[f"{g_target}.{leaf}"]
    missing = sorted(set(anchor.params) - set(tensors))
    if missing:
        raise MergeInputError(f"{g.name}: no counterpart for {anchor.name}'s {', '.join(missing[:4])}")
    try:
        moved = replace(_carried(anchor, g, tensors), passes=g.passes, front_end=g.front_end)
        check_same_function(g, moved)  # the correspondence is proved on the example inputs, not assumed
    except (PassError, TracingError) as exc:
        raise MergeInputError(f"{g.name}: carried onto {anchor.name}'s structure it computes something else "
                              f"({exc}); the code of the two models differs beyond their widths (a size spelled as "
                              "a number in a reshape?)") from exc
    return moved


def _carried(anchor: ModelGraph, g: ModelGraph, tensors: dict[str, torch.Tensor]) -> ModelGraph:
    """The anchor's structure holding ``tensors``. Where every tensor has the anchor's shape and dtype, the anchor's
    lifted graph is that graph already (groups, facts and units follow from the structure and the shapes): it is
    reused, not lifted again. Other widths change the groups' sizes and the shapes: lifted."""
    same = all(t.shape == anchor.params[k].shape and t.dtype == anchor.params[k].dtype for k, t in tensors.items())
    if same and [getattr(x, "shape", x) for x in g.example_inputs] == [getattr(x, "shape", x) for x in anchor.example_inputs]:
        return replace(anchor.with_updates(tensors), name=g.name, example_inputs=g.example_inputs)
    return lift_graph(with_tensors(anchor.module, tensors, share=True), g.example_inputs, g.name)


def paired_nodes(anchor: ModelGraph, g: ModelGraph) -> list[tuple[fx.Node, fx.Node]]:
    """Every computing node of ``anchor`` with its counterpart in ``g``, found by following both graphs from their
    outputs back through their arguments, each pair in corresponding units and computing the same thing."""
    if len(anchor.units) != len(g.units):
        raise MergeInputError(f"{g.name} has {len(g.units)} units but {anchor.name} has {len(anchor.units)}: the "
                              "models do not correspond unit by unit (balance their depths with depth=)")
    a_mods, g_mods = dict(anchor.module.named_modules()), dict(g.module.named_modules())
    a_unit, g_unit = _unit_index(anchor), _unit_index(g)
    a_out, g_out = (next(n for n in m.module.graph.nodes if n.op == "output") for m in (anchor, g))
    paired: dict[fx.Node, fx.Node] = {}
    taken: set[fx.Node] = set()
    todo = [(a_out, g_out, a_out)]
    while todo:
        x, y, user = todo.pop()
        x, y = _looked_through(x, a_mods), _looked_through(y, g_mods)
        if x in paired:
            if paired[x] is not y:
                raise MergeInputError(f"{g.name}: {anchor.name}'s node {x.name} (in {_where(anchor, a_unit.get(x.name))}"
                                      f") meets both {paired[x].name} and {y.name}: the balanced models are wired "
                                      f"differently there (seen from {user.name})")
            continue
        if y in taken and not _pure(x):  # a pure op computed once in g may stand for several in the anchor
            raise MergeInputError(f"{g.name}: node {y.name} meets two of {anchor.name}'s nodes, one of them {x.name} "
                                  f"(in {_where(anchor, a_unit.get(x.name))}): the balanced models are wired "
                                  "differently there")
        sx, sy = _signature(x, a_mods), _signature(y, g_mods)
        xs, ys = _operands(x), _operands(y)
        if sx != sy or len(xs) != len(ys):
            raise MergeInputError(f"{g.name}: node {y.name} is {sy} but its counterpart {x.name} in {anchor.name} "
                                  f"(in {_where(anchor, a_unit.get(x.name))}) is {sx}: the units do not compute the "
                                  "same kind of thing")
        if a_unit.get(x.name) != g_unit.get(y.name):
            raise MergeInputError(f"{g.name}: node {y.name} and {anchor.name}'s node {x.name} (in "
                                  f"{_where(anchor, a_unit.get(x.name))}) do not sit in corresponding units: the "
                                  "balanced models differ in structure there")
        paired[x] = y
        taken.add(y)
        todo += [(u, v, x) for u, v in zip(xs, ys, strict=True)]
    return list(paired.items())


def _signature(node: fx.Node, modules: dict[str, nn.Module]) -> NodeSignature:
    """What ``node`` computes (``topology.signature``), a tensor read by ``get_attr`` whatever its name: the units
    are paired by the depth plan, and a block's weight is named after its place (``model.layers.2.…``)."""
    return NodeSignature("get_attr", "a tensor", ()) if node.op == "get_attr" else signature(node, modules)


def _pure(node: fx.Node) -> bool:
    """An op that holds no tensor of its own (not a layer, not a parameter): a balanced model may compute it once
    where the anchor computes it once per block (Hugging Face Llama's per-layer ``cos.unsqueeze(1)`` outside its
    layers, which an inserted block's copy reads from its neighbour)."""
    return node.op in ("call_function", "call_method")


def _operands(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads, in the order its arguments name them (repeats included)."""
    out: list[fx.Node] = []
    fx.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)  # type: ignore[func-returns-value]
    return out


def _looked_through(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """``node``, or, when it returns its input unchanged (an ``nn.Identity`` shortcut, a dropout of rate 0), the
    first node before it that computes something: such nodes are no part of what a unit computes."""
    while _passes_input_on(node, modules):
        node = node.args[0]  # type: ignore[assignment]
    return node


def _passes_input_on(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        mod = modules[str(node.target)]
        return type(mod) is nn.Identity or (isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p == 0)
    return node.op == "call_method" and node.target in _SAME_VALUE_METHODS


_SAME_VALUE_METHODS = frozenset({"contiguous", "clone", "detach"})


def _unit_index(g: ModelGraph) -> dict[str, int]:
    return {n: i for i, u in enumerate(g.units) for n in u.nodes}


def _where(g: ModelGraph, index: int | None) -> str:
    return "no unit" if index is None else f"unit {g.units[index].key}"
