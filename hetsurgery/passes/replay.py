"""Structural passes as data: every structural pass has a ``spec()`` (a JSON-able dict with its ``"pass"``
name and fields), ``from_spec`` makes the pass again and ``replay`` applies a list of specs to a graph.

A package's ``plan.json`` lists the structural passes that turned the traced model into the saved one;
replaying them on the original model gives the saved structure again.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> edited = InsertIdentity("stage0", (1,))(g)
>>> edited.passes
({'pass': 'insert-identity', 'stage': 'stage0', 'positions': [1]},)
>>> replay(g, edited.passes).dump() == edited.dump()
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.passes.base import Pass, Pipeline
from hetsurgery.passes.fuse_relu_segment import FuseReluSegment
from hetsurgery.passes.insert_identity import InsertIdentity
from hetsurgery.passes.insert_zero_residual import InsertZeroResidual


def _positions(spec: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(p) for p in spec["positions"])


STRUCTURAL: Mapping[str, Callable[[Mapping[str, Any]], Pass]] = MappingProxyType({
    InsertIdentity.name: lambda s: InsertIdentity(str(s["stage"]), _positions(s)),
    InsertZeroResidual.name: lambda s: InsertZeroResidual(str(s["stage"]), _positions(s)),
    FuseReluSegment.name: lambda s: FuseReluSegment(tuple(str(u) for u in s["units"]),
                                                    tuple(torch.tensor(d, dtype=torch.float64) for d in s["signs"])),
})


def from_spec(spec: Mapping[str, Any]) -> Pass:
    """The pass a spec describes; ``PassError`` for an unknown pass or a malformed spec."""
    make = STRUCTURAL.get(str(spec.get("pass")))
    if make is None:
        raise PassError(f"unknown structural pass {spec.get('pass')!r}: known are {', '.join(STRUCTURAL)}")
    try:
        return make(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise PassError(f"a {spec['pass']} spec is malformed ({type(exc).__name__}: {exc}): {dict(spec)}") from exc


def replay(g: ModelGraph, specs: Sequence[Mapping[str, Any]]) -> ModelGraph:
    """``g`` with the passes of ``specs`` applied in order (checked as in a ``Pipeline``)."""
    return Pipeline(tuple(from_spec(s) for s in specs))(g)
