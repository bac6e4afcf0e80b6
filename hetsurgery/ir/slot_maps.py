"""Acting on every slot of every parameter: one per-group map, applied along each slot of the group.

Along every slot, produce-side axes are multiplied by ``M`` (``r x d``) and consume-side axes by ``Uᵀ``
(``W U``). A scaled permutation takes the fast path (one gather for all of a parameter's slots, scales in
place), a ``Placement`` (MAL's zero padding) one gather per slot, anything else an einsum slot by slot.
``ApplyPermutation``, ``ZipNeurons``, ``PadWidth`` and the merge (combine, align, weight matching, OT on
weights) all go through here, so the order in which a parameter's slots are visited, ``later_offsets_first``,
is decided once.

>>> import torch
>>> from hetsurgery.ir import Blocks, PermGroup, Slot
>>> grp = PermGroup(0, 3, (Slot("a", 0), Slot("b", 1, role=Role.CONSUME)), Blocks(1, 3))
>>> perm = torch.tensor([2, 0, 1])
>>> out = transform_params({"a": torch.arange(3.), "b": torch.eye(3)}, slots_by_param([grp]),
...                        SlotMaps({0: (perm, 1.0)}, {0: (perm, 1.0)}))
>>> out["a"].tolist(), out["b"][0].tolist()
([2.0, 0.0, 1.0], [0.0, 1.0, 0.0])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from hetsurgery.ir.group import PermGroup
from hetsurgery.ir.slot_algebra import (
    apply_matrix,
    gather,
    pad_slot,
    permutation_indices,
    permute_slot,
    place_slot,
    positions,
)
from hetsurgery.ir.slots import Role, Slot


@dataclass(frozen=True)
class Placement:
    """``scale`` times the ``r x width`` 0/1 matrix whose row ``i`` picks channel ``index[i]``, or is zero where
    ``index[i]`` is -1 (channels distinct): a model's channels placed among ``r`` merged ones, some of which it has
    none for (MAL's zero padding). Kept as indices, as a permutation is: dense, it is ``r x width`` float64 per model
    and group, gigabytes over the MLP groups of a billion-parameter model, all held while the merge is combined.

    >>> p = Placement(torch.tensor([1, -1, 0]), 0.5, 2)
    >>> p.dense().tolist()
    [[0.0, 0.5], [0.0, 0.0], [0.5, 0.0]]
    >>> w = torch.arange(4.).reshape(2, 2)
    >>> torch.equal(SlotMaps({0: p}, {}).apply(w, 0, Slot("w", 0)), p.dense().float() @ w)
    True
    """

    index: torch.Tensor
    scale: float
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.index.numel(), self.width

    def dense(self) -> torch.Tensor:
        m = torch.zeros(self.shape, dtype=torch.float64)
        real = self.index >= 0
        m[torch.arange(self.index.numel())[real], self.index[real]] = self.scale
        return m

    def permutation(self) -> tuple[torch.Tensor, float] | None:
        """``(perm, scale)`` when it is a scaled permutation (square, every row placed, a nonzero scale)."""
        full = self.index.numel() == self.width and bool((self.index >= 0).all()) and self.scale != 0
        return (self.index, self.scale) if full else None


Map = torch.Tensor | tuple[torch.Tensor, float] | Placement  # dense r x d, (perm, scale) = scale * I[perm], placed
GroupSlots = Iterable[tuple[int, Slot]]  # (group id, slot) pairs of one parameter


class GroupMaps(Protocol):
    """What a plan gives for one group (``plan.width_plan.GroupMatch``): model ``k``'s two maps."""

    def produce_map(self, k: int, normalised: bool = False) -> Map: ...

    def consume_map(self, k: int) -> Map: ...


def slots_by_param(groups: Iterable[PermGroup]) -> dict[str, list[tuple[int, Slot]]]:
    """Per parameter, its ``(group id, slot)`` pairs, in the order of ``groups`` and their slots."""
    out: dict[str, list[tuple[int, Slot]]] = defaultdict(list)
    for grp in groups:
        for s in grp.slots:
            out[s.param].append((grp.id, s))
    return out


def later_offsets_first(slots: GroupSlots) -> list[tuple[int, Slot]]:
    """The order to visit a parameter's slots in when widths change: from the last offset down, so a slot
    that grows or shrinks never moves one still to be visited (a concat's later inputs sit after it)."""
    return sorted(slots, key=lambda item: -item[1].offset)


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
    """Per group, what to apply on produce and consume slots; dense permutations are detected once."""

    def __init__(self, produce: Mapping[int, Map], consume: Mapping[int, Map]) -> None:
        self.maps: dict[Role, dict[int, Map]] = {
            role: {g: _fast(m) for g, m in maps.items()}
            for role, maps in ((Role.PRODUCE, produce), (Role.CONSUME, consume))}

    @staticmethod
    def of(plan_groups: Mapping[int, GroupMaps], k: int, normalised: bool = False) -> SlotMaps:
        """Model ``k``'s maps in a plan (``normalised``: each merged channel is model k's mean, no weights)."""
        return SlotMaps({g: m.produce_map(k, normalised) for g, m in plan_groups.items()},
                        {g: m.consume_map(k) for g, m in plan_groups.items()})

    def apply(self, t: torch.Tensor, gid: int, slot: Slot) -> torch.Tensor:
        """``t`` with one slot transformed (``t`` itself when group ``gid`` has no map)."""
        m = self.maps[slot.role].get(gid)
        if m is None:
            return t
        if isinstance(m, tuple):
            perm, scale = m
            out = permute_slot(t, slot, perm)
            return out if scale == 1.0 else _scale_slot(out, slot, perm.numel(), scale)
        if isinstance(m, Placement):
            out = place_slot(t, slot, m.index, m.width)
            return out if m.scale == 1.0 else _scale_slot(out, slot, m.index.numel(), m.scale)
        return apply_matrix(t, slot, m)

    def permute_all(self, t: torch.Tensor, slots: GroupSlots) -> torch.Tensor | None:
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
            if slot.packed:
                lo, hi = slot.span(size)
                out.narrow(slot.dim, lo, hi - lo).mul_(scale)
            else:
                out = _scale_slot(out, slot, size, scale)
        return out

    def transform(self, t: torch.Tensor, slots: GroupSlots) -> torch.Tensor:
        """``t`` with all of ``slots`` transformed: in one gather when it can, else slot by slot."""
        slots = list(slots)
        fast = self.permute_all(t, slots)
        return fast if fast is not None else _each_slot(t, slots, self.apply)


def _each_slot(t: torch.Tensor, slots: GroupSlots, act: Callable[[torch.Tensor, int, Slot], torch.Tensor]
              ) -> torch.Tensor:
    """``t`` after ``act(t, group id, slot)`` on every slot, ``later_offsets_first``."""
    for gid, slot in later_offsets_first(slots):
        t = act(t, gid, slot)
    return t


def _fast(m: Map) -> Map:
    if isinstance(m, Placement):
        return m.permutation() or m
    return m if isinstance(m, tuple) else as_permutation(m) or m


def _scale_slot(t: torch.Tensor, slot: Slot, size: int, scale: float) -> torch.Tensor:
    factor = torch.ones(t.shape[slot.dim], dtype=t.dtype, device=t.device)
    factor[positions(slot, size, t.device)] = scale
    shape = [1] * t.dim()
    shape[slot.dim] = -1
    return t * factor.view(shape)


def transform_params(params: Mapping[str, torch.Tensor], by_param: Mapping[str, list[tuple[int, Slot]]],
                     maps: SlotMaps, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Every parameter in ``names`` (default: all with slots) with all its slots transformed.

    Integer tensors (``num_batches_tracked``) are passed through: merge matrices do not apply to them.
    """
    out = {}
    for name in (by_param if names is None else names):
        t = params[name]
        slots = by_param.get(name, ())
        out[name] = maps.transform(t, slots) if t.is_floating_point() and slots else t
    return out


def pad_params(params: Mapping[str, torch.Tensor], groups: Iterable[PermGroup], sizes: Mapping[int, int],
               fill: Callable[[str], float], names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Every parameter holding one of ``groups`` (of those in ``names``, when given) with that group grown to
    ``sizes[group id]`` channels at each of its slots; the new entries of parameter ``name`` hold ``fill(name)``."""
    groups = list(groups)
    old = {grp.id: grp.size for grp in groups}
    wanted = None if names is None else set(names)

    def pad(t: torch.Tensor, gid: int, slot: Slot) -> torch.Tensor:
        return pad_slot(t, slot, old[gid], sizes[gid], fill(slot.param))

    return {name: _each_slot(params[name], slots, pad) for name, slots in slots_by_param(groups).items()
            if wanted is None or name in wanted}
