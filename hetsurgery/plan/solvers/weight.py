"""Git Re-Basin weight matching (Ainsworth et al. 2023): coordinate ascent over groups, no data.

Maximise ``J = Σ_params ⟨W_a, P_out W_b P_inᵀ⟩`` over one permutation per group: visit the groups in
a random order and solve each one's LAP with every other permutation fixed, until a full sweep changes
no permutation. A new permutation is kept only when it raises ``J`` as computed exactly over the
parameters the group touches (float32 products, float64 sums), so the reported ``J`` never decreases,
not even by rounding, and the search cannot cycle. Scores are float32 GEMMs summed in float64. With
``alternate=False`` every group is solved once, layer by layer (``_layer_by_layer``): the one-pass LAP
alignment that MAL's alternation improves on. Groups whose attention heads move together (``heads_with``)
are solved as one: their head order by the summed head similarities (``solvers.heads``), then each group's
channels inside the matched heads.

A group's score is a sum over the tensors it touches, and each term depends only on the permutations of the other
groups in that tensor: for models held in memory the terms are kept (``_Scores``), and a group solved again
recomputes only those whose other groups moved since (on a ResNet-20, about a quarter of the products of a run).

Only the tensors in ``a`` are matched: callers pass parameters, not BatchNorm running statistics (as
the paper does; statistics are recomputed after merging anyway).

>>> import torch
>>> from hetsurgery.ir import Blocks, PermGroup, Slot
>>> grp = PermGroup(0, 3, (Slot("w", 0),), Blocks(1, 3))
>>> a = {"w": torch.eye(3)}
>>> b = {"w": torch.eye(3)[[2, 0, 1]]}
>>> weight_matching(a, b, [grp])[0][0].tolist()   # b's row i is a's row perm[i]
[1, 2, 0]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from hetsurgery.ir import PermGroup, Slot, slots_by_param
from hetsurgery.ir.lazy import is_lazy, read_rows, shape_of
from hetsurgery.ir.slot_algebra import gather, permutation_indices, permute_slot, slot_rows
from hetsurgery.memory import release_free_memory
from hetsurgery.plan.accumulate import add_product
from hetsurgery.plan.solvers.heads import head_order
from hetsurgery.plan.solvers.lap import best_permutation

Params = Mapping[str, torch.Tensor]
PIECE = 1 << 20  # elements per piece of a permuted copy (4 MiB in float32)
BySlot = Mapping[str, list[tuple[int, Slot]]]


def weight_matching(a: Params, b: Params, groups: Sequence[PermGroup], *, max_sweeps: int = 100, seed: int = 0,
                    alternate: bool = True, from_layers: bool = False
                    ) -> tuple[dict[int, torch.Tensor], dict[str, object]]:
    """Permutations of ``b``'s groups (``new channel i = old perm[i]``) that best match ``a``.

    The report holds ``objective`` (``J`` before the first sweep and after each), ``sweeps``,
    ``converged``, and per group the objective after each of its updates. ``from_layers`` starts the
    alternation from the layer-by-layer alignment (where that raises ``J``) instead of the identity, so that
    it ends at least as high; ``objective[0]`` stays ``J`` at the identity.
    """
    by_param = {name: slots for name, slots in slots_by_param(groups).items() if name in a}
    groups = [g for g in groups if any(s.param in by_param for s in g.slots)]
    perms: dict[int, torch.Tensor] = {}  # only groups moved from the identity: the others need no copies
    values = {name: _value(a, b, by_param, perms, name) for name in by_param}  # J per parameter, current perms
    objective = [sum(values.values())]
    if not alternate:
        perms = _layer_by_layer(groups, a, b, by_param)
        objective.append(sum(_value(a, b, by_param, perms, name) for name in by_param))
        return _full(perms, groups), {"objective": objective, "sweeps": 1, "converged": False, "alternating": False}
    if from_layers:
        first = _layer_by_layer(groups, a, b, by_param)
        moved = {gid: p for gid, p in first.items() if not torch.equal(p, torch.arange(p.numel()))}
        fresh = {name: _value(a, b, by_param, moved, name) for name in by_param}
        if sum(fresh.values()) > sum(values.values()):
            perms, values = moved, fresh
    gen = torch.Generator().manual_seed(seed)
    by_id = {g.id: g for g in groups}
    units = {g.id: [by_id[m] for m in sorted({g.id, *g.heads_with}) if m in by_id] if g.structure.moves else [g]
             for g in groups}
    neighbours = {g.id: {h for u in units[g.id] for name in _touched(u, by_param) for h, _ in by_param[name]} - {g.id}
                  for g in groups}
    dirty = {g.id for g in groups}  # groups whose neighbours moved since their last solve
    scores = _Scores(a, b, by_param)
    history: dict[int, list[float]] = {g.id: [] for g in groups}
    last_change: dict[int, int] = {g.id: -1 for g in groups}
    converged = False
    for sweep in range(max_sweeps):
        changed = False
        for i in torch.randperm(len(groups), generator=gen).tolist():
            grp = groups[i]
            if grp.id in dirty:  # a clean group's score, hence its LAP, is what it was: skip it
                unit = units[grp.id]
                dirty.difference_update(u.id for u in unit)
                new = _solve(unit, scores, perms)
                if any(not torch.equal(new[u.id], perms.get(u.id, torch.arange(u.size))) for u in unit):
                    trial = {**perms, **new}
                    touched = list(dict.fromkeys(name for u in unit for name in _touched(u, by_param)))
                    fresh = {name: _value(a, b, by_param, trial, name) for name in touched}
                    # exact, so rounding in the scores never flips a permutation back and forth
                    if sum(fresh.values()) > sum(values[name] for name in fresh):
                        perms, changed = trial, True
                        last_change.update(dict.fromkeys((u.id for u in unit), sweep))
                        values.update(fresh)
                        dirty |= {n for u in unit for n in neighbours[u.id]}
            history[grp.id].append(sum(values.values()))
        objective.append(sum(values.values()))
        if not changed:
            converged = True
            break
    groups_report = {gid: {"iterations": len(h), "objective": h, "converged": converged or last_change[gid] < sweep}
                     for gid, h in history.items()}
    return _full(perms, groups), {"objective": objective, "sweeps": len(objective) - 1, "converged": converged,
                                  "alternating": True, "groups": groups_report}


def _layer_by_layer(groups: Sequence[PermGroup], a: Params, b: Params, by_param: BySlot) -> dict[int, torch.Tensor]:
    """One LAP per group, in order, each scored on the slots whose other axes are settled: frozen, or a group
    solved before it (a layer's outputs matched on its incoming weights, its inputs already permuted). A group
    with no such slot is scored on all of its slots, the unsolved groups at identity."""
    perms: dict[int, torch.Tensor] = {}
    ids = {g.id for g in groups}
    for grp in groups:
        settled = {name: slots for name, slots in by_param.items()
                   if all(gid == grp.id or gid in perms or gid not in ids for gid, _ in slots)}
        usable = settled if any(s.param in settled for s in grp.slots) else by_param
        score = _score(grp, a, b, usable, perms)
        tied = [perms[t] for t in grp.heads_with if t in perms] if grp.structure.moves else []
        order = grp.structure.order_of(tied[0]) if tied else \
            head_order([(score, grp.structure)]) if grp.structure.moves else None
        perms[grp.id] = best_permutation(score, grp.structure, order)
    return perms


def _solve(unit: Sequence[PermGroup], scores: _Scores, perms: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The best permutation of each group of ``unit`` (one group, or the groups tied by their heads) with every
    other group's fixed."""
    score = {u.id: scores(u, perms) for u in unit}
    order = head_order([(score[u.id], u.structure) for u in unit]) if unit[0].structure.moves else None
    return {u.id: best_permutation(score[u.id], u.structure, order) for u in unit}


class _Scores:
    """``_score`` of a group, term by term: for models in memory each slot's term is kept with the permutations it
    was made under (those of the other groups in its tensor) and made again only when one of them changed; the
    terms of slots no other group shares are summed once. Streamed (lazy) models keep nothing: a term is a
    ``d x d`` float64 matrix, 254 MB for a 1.1B Llama's MLP group."""

    def __init__(self, a: Params, b: Params, by_param: BySlot) -> None:
        self.a, self.b, self.by_param = a, b, by_param
        self.keep = not (is_lazy(a) or is_lazy(b))
        self.fixed: dict[int, torch.Tensor] = {}  # per group: the sum of the terms no permutation changes
        self.terms: dict[tuple[int, int], tuple[list[torch.Tensor | None], torch.Tensor]] = {}

    def __call__(self, grp: PermGroup, perms: Mapping[int, torch.Tensor]) -> torch.Tensor:
        if not self.keep:
            return _score(grp, self.a, self.b, self.by_param, perms)
        if grp.id not in self.fixed:
            alone = [slot for slot in grp.slots if not _others(slot, self.by_param)]
            self.fixed[grp.id] = _score(grp, self.a, self.b, self.by_param, {}, alone)
        score = self.fixed[grp.id].clone()
        for i, slot in enumerate(grp.slots):
            others = _others(slot, self.by_param)
            if not others:
                continue
            key = [perms.get(gid) for gid, _ in others]
            kept = self.terms.get((grp.id, i))
            if kept is None or not all(_same(x, y) for x, y in zip(kept[0], key, strict=True)):
                term = _score(grp, self.a, self.b, self.by_param, perms, [slot])
                kept = self.terms[(grp.id, i)] = (key, term)
            score += kept[1]
        return score


def _same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
    return x is y or (x is not None and y is not None and torch.equal(x, y))


def _others(slot: Slot, by_param: BySlot) -> list[tuple[int, Slot]]:
    """The other groups' slots in ``slot``'s tensor (``[]`` when it is not matched)."""
    return [(gid, o) for gid, o in by_param.get(slot.param, []) if o.dim != slot.dim]



def _full(perms: Mapping[int, torch.Tensor], groups: Sequence[PermGroup]) -> dict[int, torch.Tensor]:
    return {g.id: perms[g.id] if g.id in perms else torch.arange(g.size) for g in groups}


def _touched(grp: PermGroup, by_param: BySlot) -> list[str]:
    return list(dict.fromkeys(s.param for s in grp.slots if s.param in by_param))


def _value(a: Params, b: Params, by_param: BySlot, perms: Mapping[int, torch.Tensor], name: str) -> float:
    """``⟨a[name], b[name] with every slot permuted⟩`` (float32 products, float64 sums), piece by piece."""
    pieces = _pieces(a, b, name, by_param[name], perms, 0)
    if pieces is not None:
        return sum(float(torch.sum(_wide(pa) * _wide(pb), dtype=torch.float64)) for pa, pb in pieces)
    wa, wb = a[name], b[name]  # block-diagonal slots: the whole tensor at once
    for gid, slot in by_param[name]:
        if gid in perms:
            wb = permute_slot(wb, slot, perms[gid])
    return float(torch.sum(_wide(wa) * _wide(wb), dtype=torch.float64))


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when stored narrower (a streamed bfloat16 checkpoint is read as stored, widened a piece at a
    time): the products are those of the float32 tensor."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _score(grp: PermGroup, a: Params, b: Params, by_param: BySlot, perms: Mapping[int, torch.Tensor],
           only: Sequence[Slot] | None = None) -> torch.Tensor:
    """``score[i, j] = ⟨a's channel i, b's channel j⟩`` over every slot (or ``only`` those), b's other axes already
    permuted."""
    d = grp.size
    score = torch.zeros(d, d, dtype=torch.float64)
    # streamed models (lazy mappings): the copies of the last tensors read leave freed pages resident in the C heap,
    # given back before the next (a 1.1B Llama's MLP group: its 254 MB scores, and ~100 MB of such pages besides).
    # In memory that would only cost time: the pages are faulted in again (a ResNet-20 x8: matching 1.45x slower)
    trim = release_free_memory if is_lazy(a) or is_lazy(b) else _nothing
    for slot in grp.slots if only is None else only:
        if slot.param not in by_param:
            continue
        trim()
        others = _others(slot, by_param)
        pieces = _pieces(a, b, slot.param, others, perms, None, skip=slot.dim) if slot.chunks == 1 else None
        if pieces is not None:
            for pa, pb in pieces:
                _add(score, _rows(pa, slot, d), _rows(pb, slot, d))
            continue
        wa, wb = a[slot.param], b[slot.param]
        for gid, other in others:
            if gid in perms:
                wb = permute_slot(wb, other, perms[gid])
        if slot.chunks == 1:
            _add(score, _rows(wa, slot, d), _rows(wb, slot, d))
            continue
        per = d // slot.chunks
        part = Slot(slot.param, slot.dim, slot.offset, slot.inner)
        for j, (ca, cb) in enumerate(zip(wa.chunk(slot.chunks), wb.chunk(slot.chunks), strict=True)):
            _add(score[j * per:(j + 1) * per, j * per:(j + 1) * per], _rows(ca, part, per), _rows(cb, part, per))
    trim()  # and the last, before the LAP
    return score


def _nothing() -> None:
    pass


def _add(score: torch.Tensor, rows_a: torch.Tensor, rows_b: torch.Tensor) -> None:
    """``score += rows_a @ rows_bᵀ`` in pieces of about ``PIECE`` elements (``accumulate.add_product``)."""
    add_product(score, rows_a, rows_b, max(1, PIECE // max(1, rows_b.shape[0])))


def _indices(t: torch.Tensor, slots: Sequence[tuple[int, Slot]], perms: Mapping[int, torch.Tensor]
             ) -> dict[int, torch.Tensor] | None:
    """Per dim, one index vector doing every solved slot's permutation there (``None``: a block-diagonal slot)."""
    return permutation_indices(t, [(slot, perms[gid]) for gid, slot in slots if gid in perms])


def _pieces(a: Params, b: Params, name: str, slots: Sequence[tuple[int, Slot]], perms: Mapping[int, torch.Tensor],
            along: int | None, skip: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | None:
    """``a[name]`` and ``b[name]`` with ``slots`` permuted, in pieces of about ``PIECE`` elements along dim ``along``
    (``None``: the largest dim other than ``skip``); ``None`` when a slot is block-diagonal (no index does it).

    The copies a permutation needs, and the float32 copies of a tensor stored narrower, stay small whatever the
    layer's size (freed small blocks are reused, big ones would stay with the allocator), unpermuted tensors too: a
    bfloat16 embedding widened whole is a gigabyte with its transposed copies. When both mappings are lazy
    (``ir.lazy``: a streamed model's) and the pieces are blocks of rows no permutation moves, each piece is read
    alone: the tensor is never whole in memory."""
    shape = shape_of(a, name)
    if shape is not None and shape_of(b, name) == shape and len(shape) > 1:
        cut = along if along is not None else _largest(shape, skip)
        idx = _indices(torch.empty(()).expand(shape), slots, perms)
        if idx is None:
            return None
        if cut == 0 and 0 not in idx and shape.numel() > PIECE:
            return _read_pieces(a, b, name, shape, idx)
    wa, wb = a[name], b[name]
    idx = _indices(wb, slots, perms)
    if idx is None:
        return None
    return _cut(wa, wb, idx, along if along is not None else _largest(wb.shape, skip))


def _largest(shape: Sequence[int], skip: int | None) -> int | None:
    return max((dim for dim in range(len(shape)) if dim != skip), key=lambda dim: shape[dim], default=None)


def _read_pieces(a: Params, b: Params, name: str, shape: torch.Size, idx: Mapping[int, torch.Tensor]
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    step = max(1, PIECE // max(1, shape.numel() // shape[0]))
    for lo in range(0, shape[0], step):
        rows = (lo, min(shape[0], lo + step))
        yield read_rows(a, name, rows), gather(read_rows(b, name, rows), idx)


def _cut(wa: torch.Tensor, wb: torch.Tensor, idx: Mapping[int, torch.Tensor], along: int | None
         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if along is None or wb.numel() <= PIECE:
        yield wa, gather(wb, idx)
        return
    n = wb.shape[along]
    step = max(1, PIECE // max(1, wb.numel() // n))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        piece = {**idx, along: idx[along][lo:hi] if along in idx else torch.arange(lo, hi)}
        yield wa.narrow(along, lo, hi - lo), gather(wb, piece)


def _rows(t: torch.Tensor, slot: Slot, d: int) -> torch.Tensor:
    """The slot's channels as rows: ``(d, everything else)``."""
    return slot_rows(t, slot, d).float()
