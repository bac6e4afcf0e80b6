"""A balanced donor carried into the base's channel frame: the width plan between the two, read from the base.

The base and the balanced donor share one topology; their widths may differ. Any width method of ``merge``
solves the plan with the base as the anchor and the base's widths as the merged widths: ``permute`` (one LAP
per group, equal widths), ``zip`` (elastic), ``mal`` (zero padding and alternating LAPs: the base's own
channels are kept, a wider donor's extra channels dropped), ``mal-pad`` (zero padding, one LAP per group). The
plan gives each model ``M_k`` (``r x d_k``, merged channels from the model's) and ``U_k`` (``d_k x r``); the
donor reaches the base's channels through the merged ones:

    produce side:  A = U_base · M̃_donor   (d_base x d_donor; M̃: rows normalised, each merged channel the donor's mean)
    consume side:  C = (U_donor · M̃_base)ᵀ

For a permutation plan with the base as anchor (``permute``, ``mal``) ``U_base = M̃_base = I`` and ``A = C`` is
the donor's permutation (for ``mal``, its placement in the base's channels: a base channel without a donor
partner gets zeros); for ``zip`` a base channel gets the mean of the donor features zipped with it.

>>> import torch, hetsurgery as hs
>>> base = hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))
>>> donor = hs.trace(hs.zoo.mlp([12]), torch.randn(2, 64))
>>> a = align_to_base(base, donor, None, "mal", {}, progress=False)
>>> a.params["layers.0.weight"].shape, a.params["layers.2.weight"].shape
(torch.Size([8, 64]), torch.Size([10, 8]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph, slots_by_param
from hetsurgery.merging.driver import STAGES, plan_traced
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.options import MergeOptions
from hetsurgery.passes import MapGroups, Pipeline
from hetsurgery.plan.width_plan import GroupMatch, MatchKind, WidthPlan


@dataclass(frozen=True)
class GroupAlignment:
    """One group of the base (``group``: its stable key): its width and the donor's, and how the alternating
    search ended (``mal`` only: ``None`` for methods that do not alternate)."""

    group: str
    widths: tuple[int, int]
    converged: bool | None
    iterations: int | None


@dataclass(frozen=True)
class Aligned:
    """The donor's tensors in the base's frame under the base's names (``params``), the same placed without
    alignment (``unaligned``: channel ``i`` on channel ``i``, cut or zero-filled to the base's width), the
    width plan, and per tensor name the ``GroupAlignment`` of each permutable group it holds."""

    params: Mapping[str, torch.Tensor]
    unaligned: Mapping[str, torch.Tensor]
    plan: WidthPlan
    groups: Mapping[str, tuple[GroupAlignment, ...]]


def align_to_base(base: ModelGraph, donor: ModelGraph, data: Iterable | None, method: str,
                  options: Mapping[str, object], *, device: torch.device | str | None = None,
                  progress: bool = True) -> Aligned:
    """The donor (balanced and on the base's names) in the base's channel frame, aligned by ``method``."""
    spec = METHODS.get(method)
    if spec is None:
        raise MergeInputError(f"unknown alignment method {method!r}: use one of {', '.join(METHODS)}")
    method_options: dict[str, Any] = dict(options)  # checked by the caller: only the method's own options
    o = MergeOptions.of(method=method, anchor=0, width=0 if spec.widths is not None else None, progress=progress,
                        device=device, names=(base.name, donor.name), **method_options)
    planned = plan_traced((base, donor), data, o, dict.fromkeys(STAGES, 0.0))  # the lifted graphs: no new lift
    gb, gd = planned.graphs
    if set(gb.params) != set(gd.params):
        raise MergeInputError(f"{donor.name}: its tensors are not named as the base's after balancing "
                              f"({sorted(set(gb.params) ^ set(gd.params))[:3]})")
    produce, consume, naive = {}, {}, {}
    for gid, m in planned.plan.groups.items():
        produce[gid], consume[gid] = _into_base(m)
        naive[gid] = torch.eye(gb.group(gid).size, gd.group(gid).size, dtype=torch.float64)
    params = Pipeline((MapGroups(produce, consume),))(gd).params  # the donor carried into the base's channels
    unaligned = MapGroups(naive, naive)(gd).params
    found = {gid: _group(m, gb.group(gid).key, gb.group(gid).size, gd.group(gid).size) for gid, m in planned.plan.groups.items()}
    groups = {name: tuple(found[gid] for gid in dict.fromkeys(gid for gid, _ in slots) if gb.group(gid).perm_ok)
              for name, slots in slots_by_param(gb.groups).items()}
    return Aligned(_on_base(params, base), _on_base(unaligned, base), planned.plan, groups)


def _into_base(m: GroupMatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(``A``, ``C``): the donor's (model 1) maps into the base's (model 0) channels, produce and consume side."""
    merge_b, merge_d = _normalised(m.merge[0]), _normalised(m.merge[1])
    return m.unmerge[0] @ merge_d, (m.unmerge[1] @ merge_b).T.contiguous()


def _normalised(merge: torch.Tensor) -> torch.Tensor:
    """Rows summing to one (each merged channel the model's mean); rows without any channel stay zero."""
    sums = merge.sum(1, keepdim=True)
    return torch.where(sums != 0, merge / sums.where(sums != 0, torch.ones_like(sums)), merge)


def _group(m: GroupMatch, key: str, base_width: int, donor_width: int) -> GroupAlignment:
    if m.kind is not MatchKind.MAL or not m.mal or not m.mal[0].alternating:
        return GroupAlignment(key, (base_width, donor_width), None, None)
    return GroupAlignment(key, (base_width, donor_width), m.mal[0].converged, m.mal[0].iterations)


def _on_base(params: Mapping[str, torch.Tensor], base: ModelGraph) -> dict[str, torch.Tensor]:
    """The tensors on the base's device and dtype, checked against its shapes."""
    out = {}
    for name, t in params.items():
        ref = base.params[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise MergeInputError(f"{name}: the donor's aligned tensor has shape {tuple(t.shape)}, the base's "
                                  f"{tuple(ref.shape)}; a frozen group (the input or output) differs in width")
        out[name] = t.to(device=ref.device, dtype=ref.dtype)
    return out


def objective(base: Mapping[str, torch.Tensor], donor: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    """MAL's alignment objective over ``names``: ``Σ ⟨W_base, W_donor⟩`` (float64 sums).

    >>> objective({"w": torch.ones(2, 2)}, {"w": torch.eye(2)}, ["w"])
    2.0
    """
    return sum(float(torch.sum(base[n].double() * donor[n].double())) for n in names)
