"""Models put in correspondence unit by unit, then carried onto the anchor's names.

After depth balancing two graphs have the same units in the same order, but their own names: a ResNet-20
with inserted blocks calls its blocks ``layer1.0`` … ``layer1.3`` in an order that is not the ResNet-32's,
and a hand-written model and a ``Sequential`` one name the same layer differently. Nothing here matches by
name or by position in a parameter list: the units are paired by their order in the balanced stages (the
depth plan decided it), and inside a pair of units, and between units, the fx nodes are paired in graph
order, each pair checked to compute the same thing (the same op and target, the same layer settings except
widths, the same literal arguments). The model is then rebuilt on the anchor's structure holding its own
tensors, under the anchor's names, and lifted again; its outputs are checked against the model's own.

>>> import torch, hetsurgery as hs
>>> a = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> b = hs.trace(hs.zoo.mlp([8, 6]), torch.randn(2, 64))
>>> on_anchor_names(a, b).params["layers.2.weight"].shape   # b's tensor under a's name
torch.Size([6, 8])
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from hetsurgery.errors import MergeInputError, PassError, TracingError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.structure import with_tensors
from hetsurgery.merging.topology import signature
from hetsurgery.passes import check_same_function
from hetsurgery.tracing import lift_graph


def on_anchor_names(anchor: ModelGraph, g: ModelGraph) -> ModelGraph:
    """``g`` rebuilt on ``anchor``'s structure and names, holding ``g``'s own tensors (its widths)."""
    pairs = _paired_nodes(anchor, g)
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
    module = with_tensors(anchor.module, tensors, share=True)
    try:
        moved = replace(lift_graph(module, g.example_inputs, g.name), passes=g.passes, front_end=g.front_end)
        check_same_function(g, moved)  # the correspondence is proved on the example inputs, not assumed
    except (PassError, TracingError) as exc:
        raise MergeInputError(f"{g.name}: carried onto {anchor.name}'s structure it computes something else "
                              f"({exc}); the code of the two models differs beyond their widths (a size spelled as "
                              "a number in a reshape?)") from exc
    return moved


def _paired_nodes(anchor: ModelGraph, g: ModelGraph) -> list[tuple[fx.Node, fx.Node]]:
    a_nodes, g_nodes = list(anchor.module.graph.nodes), list(g.module.graph.nodes)
    a_unit, g_unit = _unit_index(anchor), _unit_index(g)
    if len(anchor.units) != len(g.units) or len(a_nodes) != len(g_nodes):
        raise MergeInputError(f"{g.name} has {len(g.units)} units and {len(g_nodes)} graph nodes but {anchor.name} has "
                              f"{len(anchor.units)} and {len(a_nodes)}: the models do not correspond unit by unit "
                              "(balance their depths with depth=)")
    a_mods, g_mods = dict(anchor.module.named_modules()), dict(g.module.named_modules())
    pairs = []
    for x, y in zip(a_nodes, g_nodes, strict=True):
        if a_unit.get(x.name) != g_unit.get(y.name):
            where = _where(anchor, a_unit.get(x.name))
            raise MergeInputError(f"{g.name}: node {y.name} and {anchor.name}'s node {x.name} (in {where}) do not sit "
                                  "in corresponding units: the balanced models differ in structure there")
        sx, sy = signature(x, a_mods), signature(y, g_mods)
        if sx != sy:
            raise MergeInputError(f"{g.name}: node {y.name} is {sy} but its counterpart {x.name} in {anchor.name} "
                                  f"(in {_where(anchor, a_unit.get(x.name))}) is {sx}: the units do not compute the "
                                  "same kind of thing")
        pairs.append((x, y))
    return pairs


def _unit_index(g: ModelGraph) -> dict[str, int]:
    return {n: i for i, u in enumerate(g.units) for n in u.nodes}


def _where(g: ModelGraph, index: int | None) -> str:
    return "no unit" if index is None else f"unit {g.units[index].key}"
