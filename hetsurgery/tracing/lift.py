"""``lift_graph``: a ``GraphModule`` and example inputs to a ``ModelGraph`` — the one lifting entry.

Shape propagation (``tensor_meta`` on every node), the channel rules (groups, slots, sites), the node facts
(ranges, activations), the units and stages, and ``verify``. ``trace`` calls it after tracing; structural
passes call it after editing a copy of a graph's module. Groups are recomputed by lifting again, never
patched: one lifter, one truth.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4))
>>> lift_graph(hs.to_module(g), g.example_inputs, g.name).dump() == g.dump()
True
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TypeVar

import torch
from torch import fx, nn

from hetsurgery.errors import TracingError
from hetsurgery.ir import ModelGraph, NodeFacts, OpKind, Range
from hetsurgery.ir.facts import ANY
from hetsurgery.tracing.classify import activation_of, classify
from hetsurgery.tracing.lifter import Lifter, free_of
from hetsurgery.tracing.ranges import node_range
from hetsurgery.tracing.rules import RULES
from hetsurgery.tracing.shapes import Arguments, propagate_shapes
from hetsurgery.tracing.units import find_units
from hetsurgery.tracing.values import (
    Chan,
    Free,
    HeadIndex,
    Heads,
    HeadSlice,
    Items,
    Param,
    Pieces,
    ShapeOf,
    Value,
)

T = TypeVar("T")

OPKIND_META = "hetsurgery.opkind"  # node.meta key: the OpKind the node was classified as

_ALWAYS = (OpKind.PLACEHOLDER, OpKind.OUTPUT, OpKind.GET_ATTR)
# the rules that follow ``Pieces`` (a channel axis cut along another dim); any other op on them freezes them
_PIECES_KNOWN = frozenset({OpKind.OUTPUT, OpKind.ELEMENTWISE, OpKind.TRANSPOSE, OpKind.UNSQUEEZE, OpKind.RESHAPE,
                           OpKind.FLATTEN, OpKind.GETITEM, OpKind.SPLIT, OpKind.SHAPE, OpKind.CONTAINER})
# the rules that follow part of every head (``HeadSlice``, a rotary embedding's halves); others give up on it
_SLICES_KNOWN = frozenset({OpKind.ELEMENTWISE, OpKind.BINARY, OpKind.WHERE, OpKind.CONCAT})
# the rules that follow attention weights (``HeadIndex``); after any other op their heads stay in place
_WEIGHTS_KNOWN = frozenset({OpKind.ELEMENTWISE, OpKind.BINARY, OpKind.WHERE, OpKind.SOFTMAX, OpKind.MATMUL,
                            OpKind.ATTENTION,
                            OpKind.OUTPUT, OpKind.CONTAINER, OpKind.SHAPE})


def lift_graph(gm: fx.GraphModule, example_inputs: torch.Tensor | Sequence[torch.Tensor], name: str, *,
               probe: bool = True) -> ModelGraph:
    """Lift ``gm`` (which the new graph then owns: pass a copy you will not change) into a ``ModelGraph``;
    ``probe=False`` freezes ops the rules do not know without probing them."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    modules = dict(gm.named_modules())
    recorded = propagate_shapes(gm, inputs, name, keep=(lambda n: classify(n, modules) is OpKind.UNKNOWN)
                                if probe else None)
    lx, found = _lift(gm, name, recorded if probe else None)
    groups = lx.groups()
    lx.constant_axes()
    facts = {n: _with_groups(f, lx, values) for n, (f, values) in found.items()}
    params = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    g = ModelGraph(module=gm, params={k: v.detach() for k, v in params.items()}, groups=groups,
                   fixed_axes=frozenset(lx.fixed_axes), name=name, example_inputs=inputs, facts=facts)
    units, stages = find_units(g)
    g = ModelGraph(module=gm, params=g.params, groups=groups, fixed_axes=g.fixed_axes, name=name,
                   example_inputs=inputs, facts=facts, units=units, stages=stages, distrusted=lx.untrusted_params,
                   axis_notes=lx.axis_notes)
    g.verify()
    _warn_when_nothing_is_covered(g)
    return g


def _warn_when_nothing_is_covered(g: ModelGraph) -> None:
    """Coverage 0 with parameters to cover is never silent: a warning naming the most common reason."""
    if not g.params or g.coverage() > 0:
        return
    missing = g.uncovered()
    if not missing:
        return
    why, count = Counter(missing.values()).most_common(1)[0]
    warnings.warn(f"{g.name}: no parameter is covered by a permutable group (coverage 0.000): {count} of "
                  f"{len(missing)} uncovered parameters because {why}; g.uncovered() lists every reason",
                  stacklevel=_outside_depth())


def _outside_depth() -> int:
    """The ``stacklevel`` of the first caller outside hetsurgery (so a warning names the user's line)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    depth = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, depth = frame.f_back, depth + 1
    return depth


def _lift(gm: fx.GraphModule, name: str, recorded: Mapping[fx.Node, Arguments] | None
          ) -> tuple[Lifter, dict[str, tuple[NodeFacts, tuple[Value, Value]]]]:
    """Run every node's channel rule and range rule; per node its facts (groups still to fill in) and values."""
    lx = Lifter(gm, name, recorded)
    ranges: dict[fx.Node, Range] = {}
    facts: dict[str, tuple[NodeFacts, tuple[Value, Value]]] = {}
    for node in gm.graph.nodes:
        kind = classify(node, lx.modules)
        node.meta[OPKIND_META] = kind
        inputs = [lx.env[n] for n in node.all_input_nodes]
        weights = [w for v in inputs for w in _find(v, HeadIndex)]
        if weights and kind not in _WEIGHTS_KNOWN:
            lx.stick([w.var for w in weights], f"attention weights reach node {node.name}, whose rule does not "
                                               "follow heads")
        if kind not in _PIECES_KNOWN and any(_has_pieces(v) for v in inputs):
            lx.env[node] = lx.give_up(inputs, f"pieces of a channel axis reach node {node.name}, whose rule "
                                              "does not follow them")
        elif kind not in _SLICES_KNOWN and any(_find(v, HeadSlice) for v in inputs):
            lx.env[node] = lx.give_up(inputs, f"part of each head reaches node {node.name}, whose rule does not "
                                              "follow it")
        elif kind in _ALWAYS or _carries_groups(inputs) or _has_params(lx, node):
            lx.env[node] = RULES[kind](lx, node)
        else:  # nothing here depends on a group's order: whatever the op, so does its result
            lx.env[node] = free_of(inputs)
        if weights and kind not in _WEIGHTS_KNOWN and _find(lx.env[node], HeadIndex):
            lx.env[node] = Free("attention weights")
        activation = activation_of(node, lx.modules) if kind is OpKind.ELEMENTWISE else None
        ranges[node] = node_range(node, kind, activation, ranges, lx.modules)
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        out = lx.env[node]
        dim = out.dim if isinstance(out, (Chan, Heads)) else None
        facts[node.name] = (NodeFacts(kind, shape, dim, range=ranges[node] if shape is not None else ANY,
                                      activation=activation), (Items(tuple(inputs)), out))
    return lx, facts


def _with_groups(f: NodeFacts, lx: Lifter, values: tuple[Value, Value]) -> NodeFacts:
    reads, writes = values
    return NodeFacts(f.kind, f.shape, f.channel_dim, lx.ids(reads), lx.ids(writes), f.range, f.activation)


def _has_pieces(v: object) -> bool:
    return isinstance(v, Pieces) or (isinstance(v, Items) and any(_has_pieces(x) for x in v.items))


def _find(v: object, kind: type[T]) -> list[T]:
    """The values of type ``kind`` in ``v`` (itself or inside tuples)."""
    if isinstance(v, kind):
        return [v]
    if isinstance(v, Items):
        return [x for item in v.items for x in _find(item, kind)]
    return []


def _carries_groups(values: Sequence[object]) -> bool:
    for v in values:
        if isinstance(v, (Chan, Heads, HeadSlice, HeadIndex, Pieces, Param, ShapeOf)):
            return True
        if isinstance(v, Items) and _carries_groups(list(v.items)):
            return True
    return False


def _has_params(lx: Lifter, node: fx.Node) -> bool:
    return node.op == "call_module" and bool(lx.module_params(str(node.target)))


def structural_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure (new submodules) that shares its parameters and buffers."""
    import copy

    memo: dict[int, object] = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    try:
        return copy.deepcopy(module, memo)
    except Exception as exc:  # a module holding something deepcopy refuses (a lock, a file handle)
        raise TracingError(f"{type(module).__name__}: the model cannot be copied ({type(exc).__name__}: {exc}); "
                           "hetsurgery works on its own copy of the structure so that it never changes yours. "
                           "Remove the attribute that cannot be copied, or keep the module holding it out of "
                           "the graph with leaf_modules=") from exc
