"""Git Re-Basin weight matching (Ainsworth et al. 2023): coordinate descent over groups, no data.

Maximise ``Σ_layers ⟨W_a, P_out W_b P_inᵀ⟩`` over one permutation per group: visit the groups in a
random order and solve each one's LAP with every other permutation fixed, until a full sweep improves
the objective by nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hetsurgery.ir import PermGroup, Slot
from hetsurgery.ir.slot_algebra import permute_slot
from hetsurgery.plan.apply import slots_by_param
from hetsurgery.plan.solvers.lap import assignment_value, best_permutation


def weight_matching(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], groups: Sequence[PermGroup], *,
                    max_sweeps: int = 100, seed: int = 0) -> tuple[dict[int, torch.Tensor], dict[str, object]]:
    """Permutations of ``b``'s groups (``new channel i = old perm[i]``) that best match ``a``.

    Returns the permutations and a report with the objective after each sweep.
    """
    by_param = slots_by_param(groups)
    perms = {g.id: torch.arange(g.size) for g in groups}
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    for _ in range(max_sweeps):
        gain = 0.0
        for i in torch.randperm(len(groups), generator=gen).tolist():
            grp = groups[i]
            score = _score(grp, a, b, by_param, perms)
            new = best_permutation(score, grp.structure.size)
            gain += assignment_value(score, new) - assignment_value(score, perms[grp.id])
            perms[grp.id] = new
        history.append(gain)
        if gain <= 1e-9:
            break
    return perms, {"sweeps": len(history), "gain_per_sweep": history, "converged": history[-1] <= 1e-9}


def _score(grp: PermGroup, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
           by_param: Mapping[str, list[tuple[int, Slot]]], perms: Mapping[int, torch.Tensor]) -> torch.Tensor:
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
        for j, (ca, cb) in enumerate(zip(wa.chunk(slot.chunks), wb.chunk(slot.chunks), strict=True)):
            part = Slot(slot.param, slot.dim, slot.offset, slot.inner)
            score[j * per:(j + 1) * per, j * per:(j + 1) * per] += (_rows(ca, part, per) @ _rows(cb, part, per).T).double()
    return score


def _rows(t: torch.Tensor, slot: Slot, d: int) -> torch.Tensor:
    """The slot's channels as rows: ``(d, everything else)``."""
    seg = t.narrow(slot.dim, slot.offset, d * slot.inner).movedim(slot.dim, 0)
    return seg.reshape(d, -1).float()
