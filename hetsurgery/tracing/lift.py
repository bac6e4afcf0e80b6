"""Lift a shape-annotated ``GraphModule`` into permutation groups by walking its nodes in order."""

from __future__ import annotations

from collections.abc import Sequence

from torch import fx

from hetsurgery.ir import OpKind, PermGroup
from hetsurgery.tracing.classify import classify
from hetsurgery.tracing.lifter import Lifter, free_why
from hetsurgery.tracing.rules import RULES
from hetsurgery.tracing.values import Chan, Free, Heads, Items, Param, ShapeOf

OPKIND_META = "hetsurgery.opkind"  # node.meta key: the OpKind the node was classified as

_ALWAYS = (OpKind.PLACEHOLDER, OpKind.OUTPUT, OpKind.GET_ATTR)


def lift(gm: fx.GraphModule, name: str) -> tuple[tuple[PermGroup, ...], frozenset[tuple[str, int]]]:
    """Run every node's channel rule; return the groups and the parameter axes fixed by design."""
    lx = Lifter(gm, name)
    for node in gm.graph.nodes:
        kind = classify(node, lx.modules)
        node.meta[OPKIND_META] = kind
        inputs = [lx.env[n] for n in node.all_input_nodes]
        if kind in _ALWAYS or _carries_groups(inputs) or _has_params(lx, node):
            lx.env[node] = RULES[kind](lx, node)
        else:  # nothing here depends on a group's order: whatever the op, so does its result
            lx.env[node] = Free(free_why(inputs))
    return lx.groups(), frozenset(lx.fixed_axes)


def _carries_groups(values: Sequence[object]) -> bool:
    for v in values:
        if isinstance(v, (Chan, Heads, Param, ShapeOf)):
            return True
        if isinstance(v, Items) and _carries_groups(list(v.items)):
            return True
    return False


def _has_params(lx: Lifter, node: fx.Node) -> bool:
    return node.op == "call_module" and bool(lx.module_params(str(node.target)))
