"""Carry a model's parameters into the merged channel space of a plan.

Along every slot, produce-side axes are multiplied by ``M`` (``r x d``) and consume-side axes by ``Uᵀ``
(``W U``). A scaled permutation takes the fast path (``index_select``), anything else an einsum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import torch

from hetsurgery.ir import PermGroup, Role, Slot
from hetsurgery.ir.slot_algebra import apply_matrix, permute_slot


def slots_by_param(groups: Iterable[PermGroup]) -> dict[str, list[tuple[int, Slot]]]:
    out: dict[str, list[tuple[int, Slot]]] = defaultdict(list)
    for grp in groups:
        for s in grp.slots:
            out[s.param].append((grp.id, s))
    return out


def as_permutation(m: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """``(perm, scale)`` when ``m == scale * I[perm]`` (each row one equal nonzero, columns distinct)."""
    if m.shape[0] != m.shape[1]:
        return None
    nz = m != 0
    if not bool((nz.sum(1) == 1).all()):
        return None
    perm = nz.to(torch.int8).argmax(1)
    vals = m[torch.arange(m.shape[0]), perm]
    if perm.unique().numel() != perm.numel() or not bool((vals == vals[0]).all()):
        return None
    return perm, float(vals[0])


class SlotMaps:
    """Per group, the matrices to apply on produce and consume slots, with permutations detected once."""

    def __init__(self, produce: Mapping[int, torch.Tensor], consume: Mapping[int, torch.Tensor]) -> None:
        self.mats = {Role.PRODUCE: dict(produce), Role.CONSUME: dict(consume)}
        self.fast = {role: {g: as_permutation(m) for g, m in mats.items()} for role, mats in self.mats.items()}

    def apply(self, t: torch.Tensor, gid: int, slot: Slot) -> torch.Tensor:
        if gid not in self.mats[slot.role]:
            return t
        fast = self.fast[slot.role][gid]
        if fast is not None:
            perm, scale = fast
            out = permute_slot(t, slot, perm)
            return out if scale == 1.0 else _scale_slot(out, slot, perm.numel(), scale)
        return apply_matrix(t, slot, self.mats[slot.role][gid])


def _scale_slot(t: torch.Tensor, slot: Slot, size: int, scale: float) -> torch.Tensor:
    lo, hi = slot.span(size)
    factor = torch.ones(t.shape[slot.dim], dtype=t.dtype)
    factor[lo:hi] = scale
    shape = [1] * t.dim()
    shape[slot.dim] = -1
    return t * factor.view(shape)


def transform_params(params: Mapping[str, torch.Tensor], by_param: Mapping[str, list[tuple[int, Slot]]],
                     maps: SlotMaps, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Every parameter in ``names`` (default: all with slots) with all its slots transformed."""
    out = {}
    for name in (by_param if names is None else names):
        t = params[name]
        if t.is_floating_point():
            # from the last offset down: a width change then never moves a slot still to be transformed
            for gid, slot in sorted(by_param.get(name, ()), key=lambda item: -item[1].offset):
                t = maps.apply(t, gid, slot)
        out[name] = t
    return out
