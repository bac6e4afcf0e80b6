"""Acting on one slot of a parameter: permute, pad, place, or multiply by a matrix along the slot's channels.

Every pass and the merge's combine step go through these functions, so the slot semantics
(``offset``, ``inner``, ``chunks``, ``stride``) live in one place; ``slot_maps`` applies them to every slot of
every parameter.

>>> import torch
>>> from hetsurgery.ir.slots import Slot
>>> w = torch.arange(6.).reshape(1, 6)
>>> permute_slot(w, Slot("w", 1, inner=2), torch.tensor([2, 0, 1]))
tensor([[4., 5., 0., 1., 2., 3.]])
>>> permute_slot(w, Slot("w", 1, offset=1, stride=2), torch.tensor([2, 0, 1]))   # odd columns only
tensor([[0., 5., 2., 1., 4., 3.]])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from hetsurgery.ir.slots import Slot, channel_start


def _segment(t: torch.Tensor, slot: Slot, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``t`` along the slot's dim into (before, the slot's segment, after)."""
    lo, hi = slot.span(size)
    n = t.shape[slot.dim]
    return t.narrow(slot.dim, 0, lo), t.narrow(slot.dim, lo, hi - lo), t.narrow(slot.dim, hi, n - hi)


def positions(slot: Slot, size: int, device: torch.device | None = None) -> torch.Tensor:
    """The indices along ``slot.dim`` of a group of ``size`` channels, channel by channel (``inner`` each)."""
    return torch.as_tensor(slot.positions(size), dtype=torch.long, device=device)


def slot_rows(t: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """``(size, -1)``: channel ``c``'s entries of ``t`` (its ``inner`` positions and every other axis) in row ``c``."""
    if slot.chunks > 1:
        raise ValueError(f"{slot.param}: block-diagonal slots have no rows of their own")
    if slot.packed:
        seg = t.narrow(slot.dim, slot.offset, size * slot.inner)
    else:
        seg = t.index_select(slot.dim, positions(slot, size, t.device))
    return seg.movedim(slot.dim, 0).reshape(size, -1)


def apply_matrix(t: torch.Tensor, slot: Slot, a: torch.Tensor) -> torch.Tensor:
    """Replace the slot's ``d`` channels by ``a @ channels`` (``a`` is ``r x d``); the dim shrinks or grows.

    Interleaved channels (``stride > 1``, or runs with a ``skip``) sit between other groups' channels: only a
    square ``a`` fits there.
    """
    if slot.chunks > 1:
        raise ValueError(f"{slot.param}: block-diagonal slots only take permutations")
    d = a.shape[1]
    if not slot.packed:
        if a.shape[0] != d:
            raise ValueError(f"{slot.param}: interleaved channels (stride {slot.stride}, skip {slot.skip}) "
                             "cannot change width")
        idx = positions(slot, d, t.device)
        moved = t.index_select(slot.dim, idx).movedim(slot.dim, 0)
        grid = moved.reshape(d, slot.inner, -1)
        out = torch.einsum("rd,dij->rij", a.to(t.dtype), grid).reshape(moved.shape).movedim(0, slot.dim)
        return t.index_copy(slot.dim, idx, out)
    before, seg, after = _segment(t, slot, d)
    moved = seg.movedim(slot.dim, 0)
    rest = moved.shape[1:]
    grid = moved.reshape(d, slot.inner, -1)
    out = torch.einsum("rd,dij->rij", a.to(t.dtype), grid).reshape(a.shape[0] * slot.inner, *rest)
    return torch.cat([before, out.movedim(0, slot.dim), after], dim=slot.dim)


def permute_slot(t: torch.Tensor, slot: Slot, perm: torch.Tensor) -> torch.Tensor:
    """New channel ``i`` is old channel ``perm[i]``, at every position the slot names."""
    if slot.chunks > 1:
        return _permute_chunks(t, slot, perm)
    index = permutation_indices(t, [(slot, perm)])
    assert index is not None
    return t.index_select(slot.dim, index[slot.dim])


def place_slot(t: torch.Tensor, slot: Slot, index: torch.Tensor, size: int) -> torch.Tensor:
    """The slot's ``size`` channels replaced by ``index.numel()`` ones: new channel ``i`` is old channel ``index[i]``,
    or zeros where ``index[i]`` is -1 (the dim shrinks or grows); what ``apply_matrix`` does with the 0/1 matrix of
    those rows, by one gather."""
    if not slot.packed or slot.chunks > 1:
        raise ValueError(f"{slot.param}: interleaved or block-diagonal channels cannot change width")
    before, seg, after = _segment(t, slot, size)
    shape = list(t.shape)
    shape[slot.dim] = slot.inner
    seg = torch.cat([seg, torch.zeros(shape, dtype=t.dtype, device=t.device)], dim=slot.dim)  # channel `size`, zeros: -1's
    source = torch.where(index >= 0, index, size).to(t.device)
    moved = seg.index_select(slot.dim, (source[:, None] * slot.inner + torch.arange(slot.inner, device=t.device))
                             .reshape(-1))
    return torch.cat([before, moved, after], dim=slot.dim)


def permutation_indices(t: torch.Tensor, slots: Iterable[tuple[Slot, torch.Tensor]]) -> dict[int, torch.Tensor] | None:
    """Per dim of ``t``, one index vector doing the permutations of all ``(slot, perm)`` pairs there
    (``None`` when a slot is block-diagonal: it permutes inside chunks, not along a whole dim)."""
    index: dict[int, torch.Tensor] = {}
    for slot, perm in slots:
        if slot.chunks > 1:
            return None
        v = index.setdefault(slot.dim, torch.arange(t.shape[slot.dim], device=t.device))
        inner = torch.arange(slot.inner, device=t.device)
        start = channel_start(perm.to(t.device), slot.stride, slot.run, slot.skip)
        moved = slot.offset + (start[:, None] * slot.inner + inner).reshape(-1)
        if slot.packed:
            lo, hi = slot.span(perm.numel())
            v[lo:hi] = moved
        else:
            v[positions(slot, perm.numel(), t.device)] = moved
    return index


def gather(t: torch.Tensor, index: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """``t`` re-indexed along several dims in one copy (broadcast index vectors, no intermediate tensors)."""
    if not index:
        return t
    last = max(index)
    key = []
    for dim in range(last + 1):
        v = index.get(dim)
        shape = [1] * (last + 1)
        shape[dim] = -1
        key.append((v if v is not None else torch.arange(t.shape[dim], device=t.device)).view(shape))
    return t[tuple(key)]


def _permute_chunks(t: torch.Tensor, slot: Slot, perm: torch.Tensor) -> torch.Tensor:
    """A grouped conv's input: chunk ``j`` (along dim 0) reads only block ``j`` of the group."""
    if not slot.packed:
        raise ValueError(f"{slot.param}: block-diagonal slots cannot be interleaved")
    per = perm.numel() // slot.chunks
    parts = []
    for j, chunk in enumerate(t.chunk(slot.chunks, dim=0)):
        local = perm[j * per:(j + 1) * per] - j * per
        idx = (local[:, None] * slot.inner + torch.arange(slot.inner)).reshape(-1)
        parts.append(chunk.index_select(slot.dim, idx))
    return torch.cat(parts, dim=0)


def pad_slot(t: torch.Tensor, slot: Slot, size: int, new_size: int, fill: float = 0.0) -> torch.Tensor:
    """Append ``new_size - size`` channels (each ``inner`` wide) filled with ``fill`` after the slot."""
    if not slot.packed:
        raise ValueError(f"{slot.param}: interleaved channels (stride {slot.stride}, skip {slot.skip}) cannot be "
                         "padded")
    before, seg, after = _segment(t, slot, size)
    shape = list(t.shape)
    shape[slot.dim] = (new_size - size) * slot.inner
    extra = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    return torch.cat([before, seg, extra, after], dim=slot.dim)
