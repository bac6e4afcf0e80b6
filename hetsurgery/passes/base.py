"""The pass convention and ``Pipeline``.

A pass is a frozen dataclass with a ``name`` class variable and ``__call__(graph) -> graph`` that returns
a new ``ModelGraph`` and never touches its input. ``Pipeline`` runs passes in order and verifies the
graph after each one; a failure names the pass and the ones that ran before it.

>>> import torch, hetsurgery
>>> from hetsurgery.passes import ApplyPermutation, Pipeline
>>> g = hetsurgery.trace(hetsurgery.zoo.mlp([3], in_features=4, num_classes=2), torch.randn(1, 4))
>>> Pipeline((ApplyPermutation({0: torch.tensor([2, 0, 1])}),))(g).params["layers.0.weight"].shape
torch.Size([3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from hetsurgery.errors import HetsurgeryError, PassError
from hetsurgery.ir import ModelGraph


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]

    def __call__(self, g: ModelGraph) -> ModelGraph: ...


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[Pass, ...]
    name: ClassVar[str] = "pipeline"

    def __call__(self, g: ModelGraph) -> ModelGraph:
        done: list[str] = []
        for p in self.passes:
            try:
                g = p(g)
                g.verify()
            except Exception as exc:  # a pass's own bug (KeyError, IndexError, ...) must still name the pass
                before = ", ".join(done) or "none"
                detail = str(exc) if isinstance(exc, HetsurgeryError) else f"{type(exc).__name__}: {exc}"
                raise PassError(f"{g.name}: pass {p.name} failed (passes before it: {before}): {detail}") from exc
            done.append(p.name)
        return g
