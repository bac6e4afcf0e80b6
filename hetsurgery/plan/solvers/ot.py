"""OTFusion (Singh & Jaggi 2020): optimal transport between two models' neurons with POT.

The cost between neuron ``i`` of model ``k`` and neuron ``j`` of the target model is the euclidean
distance of their activation vectors, ``sqrt(E[(x_i - y_j)²])``, computed exactly from the streamed second
moments. ``coupling`` solves the transport; ``maps_of`` turns the coupling ``T`` (``d_k x d_0``) into the
merge and unmerge: each merged (target) neuron is the mass-weighted mean of the source neurons sent to it,
``M_k = α_k (T / column sums)ᵀ``, and each source neuron's outgoing weights are *split* over the target
neurons it went to, ``U_k = T / row sums``. With equal widths and distinct features ``T`` is a permutation
and both are that permutation.

Where we depart from OTFusion, and why. With uniform marginals on both sides, a model of width ``d_k``
transported onto a wider one sends each neuron's mass to ``d_0 / d_k`` targets on average: (1) OTFusion's
``T diag(1/β)`` on the consumer side counts a split neuron's outgoing weights once per copy (row sums
``d_0 / d_k``: a 256-wide layer carried onto 512 doubled its logits), so we split them (rows sum to 1);
(2) a function-preserving widening that duplicates *some* neurons (Net2Net) has non-uniform "copy counts"
that uniform marginals cannot represent, so the exact solver (``emd``) with unequal widths solves the
transport with the wider side uniform and the narrower side's marginal free but at least one share per
neuron: every neuron of the wider model is assigned to exactly one neuron of the narrower model, and every
neuron of the narrower model receives at least one. That linear programme has integral optima; we solve it
as one square assignment (the narrow side's neurons once each, plus ``w - n`` "any neuron" columns whose
cost is the nearest one's). With equal widths it is the same permutation as before. Sinkhorn keeps uniform
marginals on a cost normalised by its maximum (an entropic approximation; only the split above changes).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.solvers.heads import expand
from hetsurgery.plan.stats import GroupStats, signature_agreement
from hetsurgery.plan.width_plan import GroupMatch, MatchKind


class OTSolver(enum.Enum):
    """How the transport is solved: exactly (``EMD``, a linear programme) or entropically (``SINKHORN``)."""

    EMD = "emd"
    SINKHORN = "sinkhorn"


class OTCost(enum.Enum):
    """What is compared between neurons: their activations on calibration data, or their incoming weights."""

    ACTIVATIONS = "activations"
    WEIGHTS = "weights"


def as_solver(solver: OTSolver | str) -> OTSolver:
    """``solver`` as an ``OTSolver`` (users write ``"emd"`` or ``"sinkhorn"``)."""
    if isinstance(solver, OTSolver):
        return solver
    by_value = {s.value: s for s in OTSolver}
    if solver not in by_value:
        raise ValueError(f"unknown OT solver {solver!r}: use {' or '.join(repr(s.value) for s in OTSolver)}")
    return by_value[solver]


def feature_distance(stats: GroupStats, k: int, anchor: int, signature: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(E[(x_i - y_j)²])`` between model ``k``'s features (rows) and the anchor's (columns).

    Constant features of equal value are at distance 0 on the data; a ``signature`` (``channel_signature``)
    separates them by a tiny amount unless their own parameters agree too (see ``GroupStats.similarity``).
    """
    m2 = stats.second_moment()
    xx = stats.block(m2, k, k).diagonal()
    yy = stats.block(m2, anchor, anchor).diagonal()
    xy = stats.block(m2, k, anchor)
    dist = (xx[:, None] + yy[None, :] - 2 * xy).clamp_min(0).sqrt()
    if signature is None:
        return dist
    ties = stats.block(stats.constant_pairs(), k, anchor)
    apart = 1.0 - stats.block(signature_agreement(signature), k, anchor)
    scale = 1e-6 * float(dist.max().clamp_min(1e-12))
    return torch.where(ties, scale * (1.0 + apart), dist)


def coupling(cost: torch.Tensor, solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01) -> torch.Tensor:
    """The transport plan between source neurons (rows) and target neurons (columns); its entries sum to 1.

    >>> import torch
    >>> coupling(torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64)).tolist()
    [[0.0, 0.5], [0.5, 0.0]]
    >>> coupling(torch.tensor([[0., 5., 1.], [5., 0., 9.]], dtype=torch.float64)).mul(3).tolist()   # 2 onto 3
    [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    return torch.from_numpy(COUPLINGS[as_solver(solver)](cost.double().cpu().numpy(), reg))


def _emd(c: np.ndarray, reg: float) -> np.ndarray:
    n, m = c.shape
    return _covering_assignment(c) if n != m else _pot().emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m), c)


def _sinkhorn(c: np.ndarray, reg: float) -> np.ndarray:
    n, m = c.shape
    t = np.asarray(_pot().sinkhorn(np.full(n, 1.0 / n), np.full(m, 1.0 / m), c / max(c.max(), 1e-12), reg))
    # Sinkhorn meets its marginals only to a tolerance: make every target neuron's mass exactly 1/m
    return t / np.maximum(t.sum(0, keepdims=True), 1e-300) / m


COUPLINGS: Mapping[OTSolver, Callable[[np.ndarray, float], np.ndarray]] = MappingProxyType({
    OTSolver.EMD: _emd,
    OTSolver.SINKHORN: _sinkhorn,
})


def _covering_assignment(c: np.ndarray) -> np.ndarray:
    """Each neuron of the wider side to one neuron of the narrower side, every narrow neuron used: minimal cost."""
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs 0.4 s to import: on first use

    wide_rows = c.shape[0] > c.shape[1]
    cw = c if wide_rows else c.T  # (wide, narrow)
    w, n = cw.shape
    square = np.concatenate([cw, np.repeat(cw.min(1, keepdims=True), w - n, axis=1)], axis=1)
    rows, cols = linear_sum_assignment(square)
    to = np.where(cols < n, cols, cw.argmin(1)[rows])
    t = np.zeros((w, n))
    t[rows, to] = 1.0 / w
    return t if wide_rows else t.T


def _pot():  # type: ignore[no-untyped-def]
    """POT, imported on first use: it pulls in scikit-learn, which ``import hetsurgery`` should not pay for."""
    import ot

    return ot


def maps_of(t: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, U)`` of a coupling: targets average their sources (``M``), sources split their outputs (``U``).

    >>> import torch
    >>> m, u = maps_of(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.25, 0.25]], dtype=torch.float64), 1.0)
    >>> m.tolist(), u.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    """
    cols = t.sum(0, keepdim=True)
    rows = t.sum(1, keepdim=True)
    merge = weight * torch.where(cols > 0, t / cols.clamp_min(1e-300), torch.zeros_like(t)).T.contiguous()
    unmerge = torch.where(rows > 0, t / rows.clamp_min(1e-300), torch.zeros_like(t))
    return merge, unmerge


def ot_match(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float], anchor: int = 0, *,
             solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01, signature: torch.Tensor | None = None,
             orders: Sequence[torch.Tensor | None] | None = None) -> GroupMatch:
    """Transport every model onto the anchor's neurons, block by block (heads stay heads; heads that move
    are first put in the anchor's order, ``orders[k]``: model ``k``'s head for each anchor head)."""
    solver = as_solver(solver)
    d0 = stats.widths[anchor]
    merges, unmerges = [], []
    for k in range(len(stats.widths)):
        if k == anchor:
            merges.append(weights[k] * torch.eye(d0, dtype=torch.float64))
            unmerges.append(torch.eye(d0, dtype=torch.float64))
            continue
        order = orders[k] if orders is not None and blocks.moves else None
        merge, unmerge = maps_of(blockwise_coupling(feature_distance(stats, k, anchor, signature), blocks.count,
                                                    solver, reg, order), weights[k])
        merges.append(merge)
        unmerges.append(unmerge)
    return GroupMatch(gid, d0, tuple(merges), tuple(unmerges), {"solver": solver.value}, kind=MatchKind.OT)


def blockwise_coupling(cost: torch.Tensor, blocks: int, solver: OTSolver | str, reg: float,
                       order: torch.Tensor | None = None) -> torch.Tensor:
    """``coupling`` inside each of ``blocks`` diagonal blocks (heads stay heads), each block's mass ``1/blocks``;
    with ``order``, column block ``i`` (the anchor's head ``i``) couples with row block ``order[i]``."""
    n, m = cost.shape
    bn, bm = n // blocks, m // blocks
    rows = expand(order, bn) if order is not None else torch.arange(n)
    t = torch.zeros(n, m, dtype=torch.float64)
    for j in range(blocks):
        r = rows[j * bn:(j + 1) * bn]
        t[r, j * bm:(j + 1) * bm] = coupling(cost[r, j * bm:(j + 1) * bm], solver, reg) / blocks
    return t
