"""One donor made ready for one base: traced on the base's inputs, balanced to its depth, carried into its
channel frame; then blended into the base's units with a factor ``λ`` each.

``prepare_donor`` does the expensive part once (the depth plan, the width plan); ``AlignedDonor.blend`` is
cheap, so a curve along ``λ`` (``find_lambda_threshold``) aligns once and blends many times.

**What is blended.** For a unit of the base, every tensor of every layer inside the unit's nodes: weights,
biases, BatchNorm affine parameters and running statistics: ``W ← (1 − λ) W_base + λ W_donor`` (integer
buffers such as ``num_batches_tracked`` stay the base's). The running statistics blended this way are only
right for a donor that computes what the base computes; for anything else they describe neither model, so
``reset_batchnorm_after`` recomputes, on calibration data, the statistics of every BatchNorm inside or
after a blended unit (the ones before see unchanged inputs and keep the base's trained statistics).

>>> import torch, hetsurgery as hs
>>> base = hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))
>>> ready = prepare_donor(base, hs.zoo.mlp([12]), None, progress=False)
>>> g = ready.blend({"layers_0": 0.0})
>>> torch.equal(g.params["layers.0.weight"], base.params["layers.0.weight"])
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import torch
from torch import nn

from hetsurgery.assembly.align import Aligned, align_to_base, objective
from hetsurgery.assembly.depth import Counterpart, balance_donor
from hetsurgery.assembly.record import DonorRecord, UnitRecord
from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.graph import owner_of
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging.depth_options import DepthOptions
from hetsurgery.passes import ResetBatchNorm
from hetsurgery.tracing import structural_copy, trace

T = TypeVar("T")


@dataclass(frozen=True)
class AlignedDonor:
    """A donor in ``base``'s structure, names and channel frame (``params``), with the counterpart of every
    base unit and MAL's objective per unit before and after alignment."""

    base: ModelGraph = field(repr=False)
    params: Mapping[str, torch.Tensor] = field(repr=False)
    counterparts: Mapping[str, Counterpart]
    record: DonorRecord
    aligned: Aligned = field(repr=False)

    @cached_property
    def module(self) -> nn.Module:
        """The base's module (its tensors shared), built once: ``blended`` tensors run on it."""
        return to_module(self.base, share=True).eval()

    def unit_record(self, unit: str, lam: float) -> UnitRecord:
        """What absorbing ``unit`` with ``lam`` means: its counterpart, widths, objective, convergence."""
        names = unit_tensors(self.base, unit)
        learned = [n for n in names if n in _learned(self.base)]
        groups = {a.group: a for n in learned for a in self.aligned.groups.get(n, ())}
        conv = [a.converged for a in groups.values()]
        c = self.counterparts[unit]
        note = "" if c.exists else "no counterpart: the depth plan inserted an identity unit in the donor here"
        return UnitRecord(self.record.index, unit, lam, c.donor, c.describe(),
                          tuple(a.widths for a in groups.values()),
                          objective(self.base.params, self.aligned.unaligned, learned),
                          objective(self.base.params, self.params, learned),
                          None if not conv or any(x is None for x in conv) else all(conv), note)

    def blend(self, lam: Mapping[str, float]) -> ModelGraph:
        """The base with each unit of ``lam`` blended, ``(1 − λ) W_base + λ W_donor``; units without a counterpart
        in the donor are left as they are (see ``unit_record``)."""
        updates = self.blended(lam)
        return self.base.with_updates(updates) if updates else self.base

    def blended(self, lam: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Only the tensors ``blend`` changes, under their names (for ``torch.func.functional_call`` on the base's
        module, which evaluates a blend without building a new module)."""
        updates = {}
        for unit, x in lam.items():
            if not self.counterparts[unit].exists or x == 0:
                continue
            for name in unit_tensors(self.base, unit):
                mine = self.base.params[name]
                if mine.is_floating_point():
                    updates[name] = (1.0 - x) * mine + x * self.params[name]
        return updates


def prepare_donor(base: ModelGraph, donor: nn.Module, data: Iterable | None, *, index: int = 0,
                  name: str | None = None, align: str = "mal", depth: DepthOptions | None = None,
                  options: Mapping[str, object] | None = None, device: torch.device | str | None = None,
                  progress: bool = True) -> AlignedDonor:
    """Trace ``donor`` on the base's example inputs, balance it to the base's depth (``depth``: a depth method,
    needed when they differ), carry it onto the base's names and into its channel frame by ``align``."""
    name = name or f"donor {index} ({type(donor).__name__})"
    seconds = {}
    clock = time.perf_counter()
    traced = _trace_donor(base, donor, name)
    seconds["trace"] = time.perf_counter() - clock
    clock = time.perf_counter()
    balanced = _named(name, lambda: balance_donor(base, traced, data, depth, device=device))
    seconds["depth"] = time.perf_counter() - clock
    clock = time.perf_counter()
    aligned = _named(name, lambda: align_to_base(base, balanced.graph, data, align, options or {},
                                                          device=device, progress=progress))
    seconds["align"] = time.perf_counter() - clock
    record = DonorRecord(index, name, align, dict(options or {}), balanced.plan, balanced.passes, seconds)
    return AlignedDonor(base, aligned.params, balanced.counterparts, record, aligned)


def unit_tensors(g: ModelGraph, unit: str) -> tuple[str, ...]:
    """Every tensor of every layer inside the unit's nodes (and tensors the unit reads with ``get_attr``).

    >>> import torch, hetsurgery as hs
    >>> unit_tensors(hs.trace(hs.zoo.mlp([8], batch_norm=True), torch.randn(2, 64)), "layers_0")
    ... # doctest: +NORMALIZE_WHITESPACE
    ('layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias', 'layers.1.running_mean',
     'layers.1.running_var', 'layers.1.num_batches_tracked')
    """
    nodes = {n.name: n for n in g.module.graph.nodes}
    out: list[str] = []
    for node in (nodes[n] for n in g.unit(unit).nodes):
        if node.op == "call_module":
            mod = g.module.get_submodule(str(node.target))
            out += [f"{node.target}.{leaf}" for leaf, _ in [*mod.named_parameters(), *mod.named_buffers()]]
        elif node.op == "get_attr" and str(node.target) in g.params:
            out.append(str(node.target))
    return tuple(n for n in dict.fromkeys(out) if n in g.params)


def reset_batchnorm_after(g: ModelGraph, units: Iterable[str], data: Iterable, samples: int | None,
                          device: torch.device | str | None) -> ModelGraph:
    """``g`` with the running statistics of every BatchNorm inside or after ``units`` recomputed on ``data``
    (its first ``samples`` examples); BatchNorms before them keep theirs."""
    import networkx as nx  # imported here: importing hetsurgery loads no networkx

    flow = g.dataflow()
    start = {n for k in units for n in g.unit(k).nodes}
    reached = start.union(*(nx.descendants(flow, n) for n in start)) if start else set()
    mods = dict(g.module.named_modules())
    norms = {str(node.target) for node in g.module.graph.nodes if node.name in reached and node.op == "call_module"
             and isinstance(mods[str(node.target)], nn.modules.batchnorm._BatchNorm)}
    if not norms:
        return g
    fresh = ResetBatchNorm(data, max_samples=samples, device=device)(g)
    return g.with_updates({n: fresh.params[n] for n in fresh.params if owner_of(n) in norms
                           and n.rsplit(".", 1)[-1] in ("running_mean", "running_var")})


def _learned(g: ModelGraph) -> set[str]:
    return {n for n, _ in g.module.named_parameters()}


def _trace_donor(base: ModelGraph, donor: nn.Module, name: str) -> ModelGraph:
    """The donor traced on the base's example inputs; ``MergeInputError`` when its input or output space differs."""
    x = base.example_inputs
    shape = tuple(x[0].shape) if x else None
    try:
        with torch.no_grad():  # on a copy of its structure: the user's donor keeps its train/eval flags
            theirs = structural_copy(donor).eval()(*x)
    except Exception as exc:  # shape errors surface as RuntimeError, ValueError, IndexError, ...
        raise MergeInputError(f"{name} does not run on the base's inputs (shape {shape}): {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}. A donor must take the base's input space") from exc
    with torch.no_grad():
        mine = to_module(base, share=True).eval()(*x)
    got, want = _shapes(theirs), _shapes(mine)
    if got != want:
        raise MergeInputError(f"{name} outputs {got} on the base's inputs, the base {want}: a donor must "
                              "have the base's output space (the same classes); the base's output never changes")
    return trace(donor, x[0], name=name)


def _shapes(out: object) -> object:
    """A model output with every tensor replaced by its shape (dicts, tuples, lists, namedtuples kept)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__, out)


def _named(name: str, step: Callable[[], T]) -> T:
    """Run ``step``; a ``MergeInputError`` it raises names the donor."""
    try:
        return step()
    except MergeInputError as exc:
        text = str(exc)
        raise MergeInputError(text if text.startswith(name) else f"{name}: {text}") from exc
