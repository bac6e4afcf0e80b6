"""Structural passes as data: every structural pass has a ``spec()`` (a JSON-able dict with its ``"pass"``
name and fields) and a ``from_spec`` that makes the pass again; ``replay`` applies a list of specs to a graph.

The table of passes ``replay`` knows is made from the pass classes themselves (``STRUCTURAL``: each class
under its ``name``), never kept by hand, so a structural pass cannot write a spec that ``replay`` does not
read (a test checks that every pass class of ``hetsurgery.passes`` that has a ``spec`` is in it).

A package's ``plan.json`` lists the structural passes that turned the traced model into the saved one;
replaying them on the original model gives the saved structure again.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> edited = InsertIdentity("stage0", (1,))(g)
>>> edited.passes
(InsertIdentity(stage='stage0', positions=(1,)),)
>>> specs(edited.passes)
[{'pass': 'insert-identity', 'stage': 'stage0', 'positions': [1]}]
>>> replay(g, specs(edited.passes)).dump() == edited.dump()
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.passes.base import Pass, Pipeline
from hetsurgery.passes.fuse_relu_segment import FuseReluSegment
from hetsurgery.passes.insert_identity import InsertIdentity
from hetsurgery.passes.insert_post_norm_block import InsertPostNormBlock
from hetsurgery.passes.insert_zero_residual import InsertZeroResidual
from hetsurgery.passes.remove_block import RemoveBlock


class Structural(Pass, Protocol):
    """A pass that changes a graph's structure, and says so as data."""

    def spec(self) -> dict[str, Any]: ...

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Structural: ...


STRUCTURAL_PASSES: tuple[type[Structural], ...] = (InsertIdentity, InsertZeroResidual, InsertPostNormBlock, FuseReluSegment,
                                                         RemoveBlock)
STRUCTURAL: Mapping[str, type[Structural]] = MappingProxyType({cls.name: cls for cls in STRUCTURAL_PASSES})


def specs(passes: Iterable[object]) -> list[dict[str, Any]]:
    """The specs of the structural passes among ``passes`` (a graph's history), in order: what ``replay`` takes
    and ``plan.json`` keeps (the other passes change values, not structure)."""
    return [p.spec() for p in passes if isinstance(p, STRUCTURAL_PASSES)]


def from_spec(spec: Mapping[str, Any]) -> Pass:
    """The pass a spec describes; ``PassError`` for an unknown pass or a malformed spec."""
    cls = STRUCTURAL.get(str(spec.get("pass")))
    if cls is None:
        raise PassError(f"unknown structural pass {spec.get('pass')!r}: known are {', '.join(STRUCTURAL)}")
    try:
        return cls.from_spec(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise PassError(f"a {spec['pass']} spec is malformed ({type(exc).__name__}: {exc}): {dict(spec)}") from exc


def replay(g: ModelGraph, specs: Sequence[Mapping[str, Any]]) -> ModelGraph:
    """``g`` with the passes of ``specs`` applied in order (checked as in a ``Pipeline``)."""
    return Pipeline(tuple(from_spec(s) for s in specs))(g)
