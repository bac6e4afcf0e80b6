"""Git Re-Basin weight matching (Ainsworth et al. 2023): coordinate ascent over groups, no data.

Maximise ``J = Σ_params ⟨W_a, P_out W_b P_inᵀ⟩`` over one permutation per group: visit the groups in
a random order and solve each one's LAP with every other permutation fixed, until a full sweep improves
``J`` by nothing. Each step solves a LAP exactly with the current permutation among the candidates, so
``J`` never decreases (when every parameter holds each group on at most one axis, ``J`` is linear in
each permutation). With ``alternate=False`` every group is solved once with all others at identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hetsurgery.ir import PermGroup, Slot
from hetsurgery.ir.slot_algebra import permute_slot
from hetsurgery.plan.apply import slots_by_param
from hetsurgery.plan.solvers.lap import assignment_value, best_permutation

Params = Mapping[str, torch.Tensor]


def weight_matching(a: Params, b: Params, groups: Sequence[PermGroup], *, max_sweeps: int = 100, seed: int = 0,
                    alternate: bool = True) -> tuple[dict[int, torch.Tensor], dict[str, object]]:
    """Permutations of ``b``'s groups (``new channel i = old perm[i]``) that best match ``a``.

    The report holds ``objective`` (``J`` before the first sweep and after each), ``sweeps``,
    ``converged``, and per group the objective after each of its updates.
    """
    by_param = slots_by_param(groups)
    perms = {g.id: torch.arange(g.size) for g in groups}
    gen = torch.Generator().manual_seed(seed)
    objective = [_objective(a, b, by_param, perms)]
    history: dict[int, list[float]] = {g.id: [] for g in groups}
    changed: dict[int, list[bool]] = {g.id: [] for g in groups}
    if not alternate:
        scores = {g.id: _score(g, a, b, by_param, perms) for g in groups}
        perms = {g.id: best_permutation(scores[g.id], g.structure.size) for g in groups}
        objective.append(_objective(a, b, by_param, perms))
        return perms, {"objective": objective, "sweeps": 1, "converged": False, "alternating": False}
    running = objective[0]
    for _ in range(max_sweeps):
        for i in torch.randperm(len(groups), generator=gen).tolist():
            grp = groups[i]
            score = _score(grp, a, b, by_param, perms)
            new = best_permutation(score, grp.structure.size)
            running += assignment_value(score, new) - assignment_value(score, perms[grp.id])
            changed[grp.id].append(not torch.equal(new, perms[grp.id]))
            history[grp.id].append(running)
            perms[grp.id] = new
        objective.append(_objective(a, b, by_param, perms))
        running = objective[-1]
        if objective[-1] - objective[-2] <= 1e-9 * max(1.0, abs(objective[-2])):
            break
    converged = objective[-1] - objective[-2] <= 1e-9 * max(1.0, abs(objective[-2]))
    groups_report = {gid: {"iterations": len(h), "objective": h, "converged": not changed[gid][-1]}
                     for gid, h in history.items()}
    return perms, {"objective": objective, "sweeps": len(objective) - 1, "converged": converged,
                   "alternating": True, "groups": groups_report}


def _objective(a: Params, b: Params, by_param: Mapping[str, list[tuple[int, Slot]]],
               perms: Mapping[int, torch.Tensor]) -> float:
    total = 0.0
    for name, slots in by_param.items():
        wb = b[name]
        for gid, slot in slots:
            wb = permute_slot(wb, slot, perms[gid])
        total += float(torch.sum(a[name] * wb, dtype=torch.float64))  # float32 products, float64 sum
    return total


def _score(grp: PermGroup, a: Params, b: Params, by_param: Mapping[str, list[tuple[int, Slot]]],
           perms: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """``score[i, j] = ⟨a's channel i, b's channel j⟩`` over every slot, b's other axes already permuted."""
    d = grp.size
    score = torch.zeros(d, d, dtype=torch.float64)
    for slot in grp.slots:
        wb = b[slot.param]
        for gid, other in by_param[slot.param]:
            if other.dim != slot.dim:
                wb = permute_slot(wb, other, perms[gid])
        wa = a[slot.param]
        if slot.chunks == 1:
            score += (_rows(wa, slot, d) @ _rows(wb, slot, d).T).double()
            continue
        per = d // slot.chunks
        part = Slot(slot.param, slot.dim, slot.offset, slot.inner)
        for j, (ca, cb) in enumerate(zip(wa.chunk(slot.chunks), wb.chunk(slot.chunks), strict=True)):
            score[j * per:(j + 1) * per, j * per:(j + 1) * per] += (_rows(ca, part, per) @ _rows(cb, part, per).T).double()
    return score


def _rows(t: torch.Tensor, slot: Slot, d: int) -> torch.Tensor:
    """The slot's channels as rows: ``(d, everything else)``."""
    seg = t.narrow(slot.dim, slot.offset, d * slot.inner).movedim(slot.dim, 0)
    return seg.reshape(d, -1).float()
