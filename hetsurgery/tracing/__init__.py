"""Tracing: torch.fx symbolic tracing or the torch.export front end, shape propagation, op classification,
channel rules, lifting."""

from hetsurgery.tracing.classify import classify
from hetsurgery.tracing.lift import OPKIND_META, lift_graph, structural_copy
from hetsurgery.tracing.trace import trace

__all__ = ["OPKIND_META", "classify", "lift_graph", "structural_copy", "trace"]
