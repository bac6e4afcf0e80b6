"""Model Assembly Learning (Zhang et al. 2025): a base model absorbs units of donors of other widths and depths.

The base keeps its architecture, its input and its output. For each selected unit of the base (a layer or a
residual block, ``ModelGraph.units``, addressed by ``Unit.key``) and each donor, one after another:

1. **Counterpart.** The donor's unit at the same stage and position when their depths agree; else, with
   ``depth=``, the one a depth plan (CKA: LMA, SMA or CLA) gives, the donor balanced to the base's depth
   (``assembly_depth``: identity units inserted into a shallower donor; a deeper donor's layers fused,
   its extra blocks removed). A base unit that meets an inserted unit has nothing to absorb and is left alone.
2. **Alignment.** The donor is carried into the base's channel frame (``assembly_align``): LAP where the
   widths agree, zero padding and alternating LAPs (``mal``) or one LAP per group (``mal-pad``) where they do
   not (a wider donor's extra channels dropped), or ``permute`` / ``zip`` on calibration features.
3. **Blend.** ``W ← (1 − λ) W_base + λ W_donor`` for every tensor of the unit (``assembly_donor``), BatchNorm
   running statistics at and after the blended units recomputed on ``data`` when it is given.

``λ = 0`` gives the base back exactly. A donor that computes what the base computes (a permuted copy of it,
a zero-padded one aligned by ``mal`` or ``mal-pad`` — ``zip`` dilutes live channels with the padding's dead
ones —, a deeper one with zero-residual blocks) leaves its function unchanged for every ``λ`` as long as the
BatchNorm statistics are blended too (``reset_bn=False``); with ``reset_bn`` they are recomputed on ``data``
inside and after the blended units for every ``λ > 0``, which gives the base with those statistics recomputed
(the base itself when its statistics are those of ``data``). Beyond a threshold the base's own task degrades
(linear mode connectivity breaks): ``find_lambda_threshold`` finds it.

>>> import torch, hetsurgery as hs
>>> base, donor = hs.zoo.mlp([16, 16]), hs.zoo.mlp([24, 12])
>>> r = hs.assemble(base, [donor], layers=["layers_2"], lam=0.25, example_inputs=torch.randn(2, 64), progress=False)
>>> [(u.unit, u.lam, u.widths) for u in r.units]
[('layers_2', 0.25, ((16, 24), (16, 12)))]
>>> r.model(torch.randn(3, 64)).shape
torch.Size([3, 10])
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hetsurgery.assembly.donor import prepare_donor, reset_batchnorm_after
from hetsurgery.assembly.options import AssemblyOptions, Lam, Layers, check_selection
from hetsurgery.assembly.record import DonorRecord, UnitRecord, record_dict, units_table
from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import one_shot
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging import inputs
from hetsurgery.tracing import trace


@dataclass(frozen=True)
class Donor:
    """A donor with its own selection: ``layers`` (``"all"`` or the base's unit keys) and ``lam`` (a number or
    ``{unit key: λ}``); ``None`` takes ``assemble``'s. ``name`` names it in messages and the record."""

    model: nn.Module = field(repr=False)
    layers: Layers | None = None
    lam: Lam | None = None
    name: str | None = None


@dataclass(frozen=True)
class AssemblyResult:
    """The assembled ``model`` (the base's architecture) and its ``graph``, one ``UnitRecord`` per donor and
    selected unit, one ``DonorRecord`` per donor, and seconds per stage over all donors. ``save`` writes a
    package whose ``plan.json`` holds the record (``to_dict``) under ``"assembly"``."""

    model: nn.Module
    graph: ModelGraph = field(repr=False)
    units: tuple[UnitRecord, ...]
    donors: tuple[DonorRecord, ...]
    seconds: Mapping[str, float]
    batchnorm: str = ""

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self.units, self.donors, self.seconds, self.batchnorm)

    def __str__(self) -> str:
        times = "  ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        lines = [f"assembly of {len(self.donors)} donor(s): {times}  (total {self.total_seconds:.2f}s)"]
        for d in self.donors:
            lines.append(f"  {d.name}: align {d.align}" + ("" if d.depth is None else ", depth plan: " + "; ".join(
                str(sa) for md in d.depth.models for sa in md.stages)))
        lines.append(units_table(self.units, [d.name for d in self.donors]))
        if self.batchnorm:
            lines.append(f"BatchNorm: {self.batchnorm}")
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike[str], *, report: object | None = None, name: str | None = None) -> Path:
        """Write the assembled model as a package (``hetsurgery.export.save``) with the assembly record."""
        from hetsurgery.export import save

        return save(self.graph, folder, report=report if report is not None else self, name=name,
                    assembly=self.to_dict())


def assemble(base: nn.Module, donors: Sequence[nn.Module | Donor], data: Iterable | None = None,
             options: AssemblyOptions | None = None, **keywords: Any) -> AssemblyResult:
    """``base`` absorbs the selected units of each donor in turn, ``W ← (1 − λ) W_base + λ W_donor``.

    ``layers`` is ``"all"`` or a list of the base's unit keys (``hs.trace(base, x).units``); ``lam`` is a
    number in [0, 1] or ``{unit key: λ}`` (with ``layers="all"`` its keys are the units blended; with a list
    of layers it must give each of them a λ). A ``Donor`` overrides both for one donor. ``align`` is the width
    method that carries a donor into the base's channels: ``mal`` (default: zero padding, alternating LAPs;
    no data), ``mal-pad``, ``permute`` (equal widths, data), ``zip`` (data); its options (``max_sweeps=``,
    ``seed=``, ``alpha=``, ...) are keyword arguments. A donor of another depth needs ``depth="lma" | "sma" |
    "cla"`` (and data for its CKA; ``depth_cost="width"`` with CLA needs none). ``data`` yields calibration
    batches: the depth plan's similarities (first ``depth_samples``), data-driven alignment, the ReLU signs of
    fused layers, and the BatchNorm statistics after blending (``reset_bn``: ``True`` for 512 samples, a
    number, or ``False`` to keep the blended statistics). ``base_name`` names the base in messages (a ``Donor``'s
    ``name`` names a donor); ``saveable=True`` refuses a base that ``hetsurgery.export.save`` could not write as a
    package before any donor is touched. Bad input raises ``MergeInputError`` before any donor is touched. The
    options are keywords, checked once into an ``AssemblyOptions``, which may be passed instead (``options=``).
    """
    o = AssemblyOptions.given(options, keywords)
    if not isinstance(base, nn.Module):
        raise MergeInputError(f"the base is a {type(base).__name__} ({base!r:.60}), not an nn.Module")
    if isinstance(donors, nn.Module) or not donors:
        raise MergeInputError("assemble needs a list of one or more donors (models or Donor(model, layers, lam))")
    if data is not None and one_shot(data):
        raise MergeInputError("the calibration data is a one-shot iterator (a generator?); assembly reads it several "
                              "times: pass a list of batches or a DataLoader")
    specs = [d if isinstance(d, Donor) else Donor(d) for d in donors]
    for k, d in enumerate(specs):
        if not isinstance(d.model, nn.Module):
            raise MergeInputError(f"donor {k} is a {type(d.model).__name__}, not an nn.Module")
    inputs.check_finite(base, o.base_name)
    for k, d in enumerate(specs):
        inputs.check_finite(d.model, _name(d, k))
    device = inputs.default_device(o.device)
    clock = time.perf_counter()
    x = o.example_inputs if o.example_inputs is not None else inputs.first_batch(data)
    g = trace(base, x, name=o.base_name)
    if o.saveable:
        inputs.check_saveable([g])
    chosen = [select_units(g, d.layers if d.layers is not None else o.layers, d.lam if d.lam is not None else o.lam,
                           _name(d, k)) for k, d in enumerate(specs)]
    seconds = {"trace": time.perf_counter() - clock, "depth": 0.0, "align": 0.0, "blend": 0.0, "bn_reset": 0.0}
    units: list[UnitRecord] = []
    records: list[DonorRecord] = []
    bn = _bn_policy(o.reset_bn, data) if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in base.modules()) \
        else ""
    for k, (d, selection) in enumerate(zip(specs, chosen, strict=True)):
        ready = prepare_donor(g, d.model, data, index=k, name=_name(d, k), align=o.align, depth=o.depth,
                              options=o.align_options, device=device, progress=o.progress)
        for stage in ("trace", "depth", "align"):
            seconds[stage] += ready.record.seconds.get(stage, 0.0)
        records.append(ready.record)
        clock = time.perf_counter()
        made = [ready.unit_record(u, x) for u, x in selection.items()]
        units += made
        g = ready.blend(selection)
        seconds["blend"] += time.perf_counter() - clock
        clock = time.perf_counter()
        blended = [r.unit for r in made if r.blended]
        if blended and o.reset_bn and data is not None:
            samples = inputs.BN_RESET_SAMPLES if o.reset_bn is True else int(o.reset_bn)
            g = reset_batchnorm_after(g, blended, data, samples, device)
        seconds["bn_reset"] += time.perf_counter() - clock
    g = _owned(g, base)
    return AssemblyResult(to_module(g, share=True).eval(), g, tuple(units), tuple(records), seconds, bn)


def _owned(g: ModelGraph, user: nn.Module) -> ModelGraph:
    """``g`` holding copies of the tensors it still shares with the user's ``base`` (the units nothing blended):
    the assembled model is the caller's to train, the base stays theirs."""
    theirs = {t.data_ptr() for t in [*user.parameters(), *user.buffers()] if t.numel()}
    return g.with_updates({n: t.clone() for n, t in g.params.items() if t.numel() and t.data_ptr() in theirs})


def _name(d: Donor, k: int) -> str:
    return d.name or f"donor {k} ({type(d.model).__name__})"


def select_units(g: ModelGraph, layers: Layers, lam: Lam, who: str) -> dict[str, float]:
    """The units ``who`` gives to the base and their λ, checked: every key a unit of the base, λ in [0, 1]."""
    keys = [u.key for u in g.units]
    check_selection(layers, lam, who)
    if isinstance(lam, Mapping):
        for unit in lam:
            _check_unit(unit, keys, who, "lam")
    if layers == "all":
        chosen = list(lam) if isinstance(lam, Mapping) else keys
    else:
        chosen = list(dict.fromkeys(layers))
        for unit in chosen:
            _check_unit(unit, keys, who, "layers")
            if isinstance(lam, Mapping) and unit not in lam:
                raise MergeInputError(f"{who}: layers names {unit!r} but lam gives it no λ; add it to lam or leave "
                                      "it out of layers")
        if isinstance(lam, Mapping) and set(lam) - set(chosen):
            raise MergeInputError(f"{who}: lam gives a λ to {sorted(set(lam) - set(chosen))}, which layers leaves "
                                  "out; add them to layers or remove them from lam")
    return {u: float(lam[u] if isinstance(lam, Mapping) else lam) for u in chosen}


def _check_unit(unit: object, keys: Sequence[str], who: str, what: str) -> None:
    if unit not in keys:
        raise MergeInputError(f"{who}: {what} names {unit!r}, which is not a unit of the base; its units are "
                              f"{', '.join(keys)} (hetsurgery inspect lists them)")


def _bn_policy(reset_bn: bool | int, data: Iterable | None) -> str:
    if not reset_bn:
        return "blended with the same λ (reset_bn=False)"
    if data is None:
        return "blended with the same λ (no data to recompute them on)"
    samples = inputs.BN_RESET_SAMPLES if reset_bn is True else int(reset_bn)
    return f"recomputed on the first {samples} calibration samples inside and after the blended units"
