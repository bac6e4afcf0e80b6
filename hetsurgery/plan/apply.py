"""Carry a model's parameters into the merged channel space of a plan.

Along every slot, produce-side axes are multiplied by ``M`` (``r x d``) and consume-side axes by ``Uᵀ``
(``W U``). A scaled permutation takes the fast path (``index_select``), anything else an einsum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from hetsurgery.ir import PermGroup, Role, Slot
from hetsurgery.ir.slot_algebra import apply_matrix, gather, permutation_indices, permute_slot


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


Map = torch.Tensor | tuple[torch.Tensor, float]  # a dense r x d matrix, or (perm, scale) = scale * I[perm]


class SlotMaps:
    """Per group, what to apply on produce and consume slots; dense permutations are detected once."""

    def __init__(self, produce: Mapping[int, Map], consume: Mapping[int, Map]) -> None:
        self.maps: dict[Role, dict[int, Map]] = {
            role: {g: _fast(m) for g, m in maps.items()}
            for role, maps in ((Role.PRODUCE, produce), (Role.CONSUME, consume))}

    @staticmethod
    def of(plan_groups: Mapping[int, Any], k: int, normalised: bool = False) -> SlotMaps:
        """Model ``k``'s maps in a plan (``normalised``: each merged channel is model k's mean, no weights)."""
        return SlotMaps({g: m.produce_map(k, normalised) for g, m in plan_groups.items()},
                        {g: m.consume_map(k) for g, m in plan_groups.items()})

    def apply(self, t: torch.Tensor, gid: int, slot: Slot) -> torch.Tensor:
        m = self.maps[slot.role].get(gid)
        if m is None:
            return t
        if isinstance(m, tuple):
            perm, scale = m
            out = permute_slot(t, slot, perm)
            return out if scale == 1.0 else _scale_slot(out, slot, perm.numel(), scale)
        return apply_matrix(t, slot, m)

    def permute_all(self, t: torch.Tensor, slots: Iterable[tuple[int, Slot]]) -> torch.Tensor | None:
        """Every slot at once when all of them are scaled permutations: one gather, scales in place.

        The result is a new tensor, or ``t`` itself when nothing applies; ``None`` when a slot needs a
        dense map or is block-diagonal (then ``apply`` goes slot by slot).
        """
        perms: list[tuple[Slot, torch.Tensor]] = []
        scales: list[tuple[Slot, int, float]] = []
        for gid, slot in slots:
            m = self.maps[slot.role].get(gid)
            if m is None:
                continue
            if not isinstance(m, tuple):
                return None
            perms.append((slot, m[0]))
            if m[1] != 1.0:
                scales.append((slot, m[0].numel(), m[1]))
        if not perms:
            return t
        index = permutation_indices(t, perms)
        if index is None:
            return None
        out = gather(t, index)  # a new tensor: scaled in place below
        for slot, size, scale in scales:
            lo, hi = slot.span(size)
            out.narrow(slot.dim, lo, hi - lo).mul_(scale)
        return out


def _fast(m: Map) -> Map:
    return m if isinstance(m, tuple) else as_permutation(m) or m


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
        slots = by_param.get(name, ())
        if not t.is_floating_point() or not slots:
            out[name] = t
            continue
        fast = maps.permute_all(t, slots)
        if fast is not None:
            out[name] = fast
            continue
        # from the last offset down: a width change then never moves a slot still to be transformed
        for gid, slot in sorted(slots, key=lambda item: -item[1].offset):
            t = maps.apply(t, gid, slot)
        out[name] = t
    return out
