"""The pass convention, the one place passes are recorded, and ``Pipeline``.

A pass is a frozen dataclass with a ``name`` class variable and ``__call__(graph) -> graph`` that returns
a new ``ModelGraph`` and never touches its input. A pass whose ``exact`` class variable is true promises
to keep the model's function. Every pass of this package derives from ``Recorded``: its ``__call__`` runs the
pass's ``rewrite`` and appends the pass (its value) to the new graph's ``passes``, the history of what the graph
went through, whether the pass is called alone or by a ``Pipeline``. ``Pipeline`` runs passes in order,
verifies the graph after each one and checks each exact pass's promise on the graph's example inputs (outputs
before and after, relative error at most ``EXACT_TOLERANCE``); a failure names the pass and the ones that ran
before it.

>>> import torch, hetsurgery
>>> from hetsurgery.passes import ApplyPermutation, Pipeline
>>> g = hetsurgery.trace(hetsurgery.zoo.mlp([3], in_features=4, num_classes=2), torch.randn(1, 4))
>>> Pipeline((ApplyPermutation({0: torch.tensor([2, 0, 1])}),))(g).params["layers.0.weight"].shape
torch.Size([3, 4])
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from hetsurgery.errors import HetsurgeryError, IRError, PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module

EXACT_TOLERANCE = 1e-5  # relative max error an exact pass may introduce in float32 (rounding only)


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]
    exact: ClassVar[bool]  # the pass keeps the model's function (Pipeline checks it)

    def __call__(self, g: ModelGraph) -> ModelGraph: ...


class Recorded(abc.ABC):
    """The base of every pass: ``__call__`` rewrites the graph (the subclass's ``rewrite``) and records the pass in
    the new graph's history, ``passes`` (here and nowhere else).

    >>> import torch, hetsurgery as hs
    >>> from hetsurgery.passes import ApplyPermutation, PadWidth
    >>> g = hs.trace(hs.zoo.mlp([3], in_features=4, num_classes=2), torch.randn(1, 4))
    >>> [p.name for p in PadWidth(0, 5)(ApplyPermutation({0: torch.tensor([2, 0, 1])})(g)).passes]
    ['apply-permutation', 'pad-width']
    """

    def __call__(self, g: ModelGraph) -> ModelGraph:
        out = self.rewrite(g)
        return replace(out, passes=(*g.passes, self.recorded()))

    @abc.abstractmethod
    def rewrite(self, g: ModelGraph) -> ModelGraph:
        """The rewritten graph (history aside: ``__call__`` records the pass)."""

    def recorded(self) -> Recorded:
        """What the history keeps of this pass (itself; a pass holding calibration data keeps less)."""
        return self


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[Pass, ...]
    name: ClassVar[str] = "pipeline"
    exact: ClassVar[bool] = False  # each pass is checked on its own

    def __call__(self, g: ModelGraph) -> ModelGraph:
        done: list[str] = []
        for run in _runs(self.passes):
            names = " + ".join(p.name for p in run)
            try:
                out = run[0](g) if len(run) == 1 else _together(run, g)
                out.verify()
                if all(p.exact for p in run):
                    check_same_function(g, out)
            except Exception as exc:  # a pass's own bug (KeyError, IndexError, ...) must still name the pass
                before = ", ".join(done) or "none"
                detail = str(exc) if isinstance(exc, HetsurgeryError) else f"{type(exc).__name__}: {exc}"
                raise PassError(f"{g.name}: pass {names} failed (passes before it: {before}): {detail}") from exc
            done.extend(p.name for p in run)
            g = out
        return g


@runtime_checkable
class Editing(Protocol):
    """A structural pass that can edit a module another pass of its kind edited before it (``edit``), each in its
    own ``stage``: ``Pipeline`` runs such a run of passes on one copy of the module and lifts the result once."""

    stage: str
    exact: ClassVar[bool]

    def edit(self, g: ModelGraph, gm: Any) -> None: ...

    def footprint(self, g: ModelGraph) -> tuple[set[str], set[str]]: ...


def _runs(passes: tuple[Pass, ...]) -> list[list[Pass]]:
    """The passes in order, consecutive exact ``Editing`` passes of one class and distinct stages taken together
    (what one plans on a stage the others leave alone: their plans on the graph before any of them hold)."""
    runs: list[list[Pass]] = []
    for p in passes:
        last = runs[-1] if runs else None
        if (last is not None and isinstance(p, Editing) and p.exact and type(p) is type(last[0])
                and all(q.stage != p.stage for q in last)):  # type: ignore[attr-defined]
            last.append(p)
        else:
            runs.append([p])
    return runs


def _together(run: list[Pass], g: ModelGraph) -> ModelGraph:
    """The run's edits on one editable copy of ``g``'s module, planned on ``g``, lifted once, all recorded. Passes
    that touch what another one rewires (a stage's last node is where the next stage's blocks, the templates of its
    new ones, begin) are run one after the other."""
    from hetsurgery.passes.edit import editable, relift

    prints = [p.footprint(g) for p in run]  # type: ignore[attr-defined]
    if any(rewired & (other_rewired | read) for i, (rewired, _) in enumerate(prints)
           for j, (other_rewired, read) in enumerate(prints) if i != j):
        for p in run:
            g = p(g)
        return g
    gm = editable(g)
    for p in run:
        p.edit(g, gm)  # type: ignore[attr-defined]
    out = relift(gm, g)
    return replace(out, passes=(*g.passes, *(p.recorded() for p in run)))  # type: ignore[attr-defined]


def refusal(check: Callable[[], object]) -> str | None:
    """Why ``check`` refuses (the message of the ``PassError`` or ``IRError`` it raises), or ``None``: how a pass
    says whether it applies without building anything (``why_not``)."""
    try:
        check()
    except (PassError, IRError) as exc:
        return str(exc)
    return None


def check_same_function(before: ModelGraph, after: ModelGraph, tol: float = EXACT_TOLERANCE) -> float:
    """The relative max error between the two graphs' outputs on ``before``'s example inputs (``PassError``
    above ``tol``); 0 when there are no example inputs to run, or no values (a streamed model's graph: its tensors
    on the meta device)."""
    if not before.example_inputs or any(t.is_meta for t in before.params.values()):
        return 0.0
    with torch.no_grad():
        want = output_tensors(to_module(before, share=True).eval()(*before.example_inputs))
        got = output_tensors(to_module(after, share=True).eval()(*before.example_inputs))
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got, strict=True)):
        raise PassError(f"{before.name}: the outputs changed shape: {[tuple(a.shape) for a in want]} -> "
                        f"{[tuple(b.shape) for b in got]}")
    err = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item() for a, b in zip(want, got, strict=True)
              if a.is_floating_point()) if want else 0.0
    if err > tol:
        raise PassError(f"{before.name}: the model's outputs changed by {err:.2e} (relative), more than an exact "
                        f"pass may ({tol:.0e})")
    return err


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: a tensor, or those inside its dicts, lists and tuples (a Hugging
    Face ``ModelOutput`` is a dict)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in output_tensors(v)]
    return []
