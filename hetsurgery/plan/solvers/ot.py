"""OTFusion (Singh & Jaggi 2020), the layer-wise fusion CLAFusion (Nguyen et al. 2023) runs after its depth
alignment: optimal transport between two models' neurons, solved with POT.

For one group, model ``k``'s ``d_k`` neurons ``i`` (the sources) are carried onto the target model's ``d_0``
neurons ``j`` (the anchor, or whichever model has the merged width)::

    C_ij = sqrt(E[(x_i - y_j)²])                  ground metric: euclidean distance of the activations
    a_i  = 1 / |[i]|,  b_j = 1 / |[j]|            one unit of mass per distinct neuron ([i]: the copies of i)
    T    = argmin { <T, C> : T ≥ 0, T 1 = a, Tᵀ 1 ≤ b }         if Σa < Σb   (partial: the narrower source)
    T    = argmin { <T, C> : T ≥ 0, T 1 = a/Σa, Tᵀ 1 = b/Σb }   otherwise    (balanced: OTFusion's)
    f_j  = (Tᵀ 1)_j / b_j                         the share of target j's mass that model k filled
    M_k  = α_k · (T diag(1/b))ᵀ / ν               ν_j = α_0 + Σ_k α_k f_kj: merged neuron j is the mean of
    U_k  = diag(1/a) · T                          what reached it; source i's outgoing weights split where
                                                  its mass went

(``T`` scaled so that the target's masses sum to 1; ``ot.emd``, ``ot.partial.partial_wasserstein`` or their
entropic forms on ``C / max C``) and every layer is ``W* = Σ_k M_k^out W_k U_k^in`` (``merge.combine``), the
target model's own maps being ``M_0 = α_0 I / ν``, ``U_0 = I``. ``E`` is over the calibration samples at the
group's sites, exact from the streamed second moments. ``transport`` solves for ``T``, ``maps_of`` turns it
into ``(M_k, U_k)``, ``as_means`` divides by ``ν``. ``marginals="balanced"`` solves the balanced transport
whatever the widths (OTFusion as published).

As in OTFusion: the exact solver is POT's ``ot.emd``; the ground metric is the euclidean distance of
activations over samples, not squared (OTFusion's activation mode with ``--ground-metric euclidean
--not-squared --dist-normalize``, which CLAFusion's MLP ablation runs); the transported incoming weights are
``(T diag(1/b))ᵀ W``, OTFusion's marginal correction (its ``β`` is ``b``), so each merged neuron's incoming mass
is 1; the merged
weights are the weighted sum of the target's weights and the transported ones (``α_k = ½``: OTFusion's
average); a layer's incoming weights are first carried along the previous layer's transport. With equal
widths and uniform marginals ``T`` is a permutation (a vertex of the Birkhoff polytope) and ``ot`` is an
assignment on ``C``: the same as ``permute`` when ``C`` orders the pairs as the correlation does (the euclidean
distance also sees the features' scale, so the two may match some neurons differently). ``ν = 1`` whenever the
transport is balanced: every formula above is then OTFusion's.

Where it departs, and why:

1. **Outgoing weights are split, not copied or averaged.** OTFusion aligns the next layer with the same
   ``T diag(1/b)``. With uniform marginals that is ``(d_0 / d_k) · U_k``: carried onto a wider model, a neuron's
   outgoing weights are *copied* to each of its ``d_0 / d_k`` targets (a 256-wide layer carried onto 512 feeds
   the next layer twice its input), carried onto a narrower one they are *averaged* (divided by the fan-in).
   ``U_k = diag(1/a) T`` keeps the transported model's function whenever the sources sent to one target
   compute one feature: a permutation, a Net2Net widening in either direction. On equal widths the two are the
   same permutation. OTFusion's factor leans the merge towards the narrower model at every width change (it
   shrinks a wide model's averaged neurons by their fan-in); on CLAFusion's MLP pair (``bench ot_fusion`` (a))
   that favours the deep model A over the identity layers inserted into B, and in our trials (five seeds) it
   scored 95.2 against 94.8 onto the widest widths and 95.1 against 91.8 onto A's: a reweighting of the models,
   not an alignment, and a widening no longer comes back.
2. **Copies share one neuron's mass.** OTFusion's marginals are uniform over neurons. Here neurons of one
   model whose rows of ``C²`` agree (to ``1e-6`` of its largest entry: they are the same point of the ground
   metric, e.g. a neuron and its Net2Net copies) and whose features are not constant share one neuron's mass.
   Trained models have no such copies, and the marginals are OTFusion's; a Net2Net widening (some neurons
   duplicated, their outgoing weights split) is then the same measure as the model it widens and comes back
   exactly, where per-neuron mass would make a duplicated neuron outweigh its original and spill the excess onto
   other neurons. Constant features (dead ReLUs, all equal) keep a neuron's mass each, so on equal widths ``T``
   stays a permutation; a ``signature`` (``channel_signature``) separates them when their parameters differ.
3. **Features are the group's observed sites** (after the ReLU of a Linear-ReLU unit, where every matching
   method of hetsurgery looks; the merge driver collects them), where OTFusion's activation mode and CLAFusion
   use pre-activations (``--prelu-acts``) of 200 samples; ``ot_sites.pre_activation`` gives a graph observed
   there, for the driver to stream OT's statistics on. In our trials (five seeds) pre-activations scored 95.6
   against 94.8 on CLAFusion's depth-balanced pair onto the widest widths, and no better on pairs of equal depth
   (96.9 against 96.6 on equal widths, 96.4 against 96.8 on 64-64 / 128-96). All calibration samples are used:
   the coupling needs them (``bench ot_fusion`` (d)).
4. **Sinkhorn** (``solver="sinkhorn"``) runs on ``C / max C`` (OTFusion's ``--ground-metric-normalize max``) with
   the same marginals, and its columns (partial: its rows) are rescaled to ``b`` (``a``) exactly.
5. **A narrower source is transported partially** (Figalli 2010; Chapel et al. 2020): each of its neurons
   sends its mass to the targets it resembles, and targets beyond its reach receive nothing and stay
   themselves (``ν_j = α_0``: the target's own neuron, whole), as zip leaves unmatched features alone.
   OTFusion's balanced marginals make every target receive mass: carried onto a model twice as wide, each
   source neuron is copied onto two targets, and every target becomes half its own feature and half a copy
   of a neuron it may not resemble. That forced mixing is what held ``ot`` back on CLAFusion's MLP ablation
   (``bench ot_fusion`` (a), five seeds, onto the widest widths): the identity layers inserted into the
   shallow B (200 wide) met the deep A's 100- and 50-wide layers, every one of B's neurons was mixed with a
   copy of one of A's, and ``ot`` scored 94.8 (``balance="add"``) and 95.5 (``"merge"``) against zip's 97.2;
   transported partially, 96.0 and 96.7. A wider source still sends all of its mass (averaged into the
   target's neurons, balanced): dropping the neurons a partial transport would leave behind scored 86.5
   against 92.0 onto A's widths. On equal numbers of distinct neurons (a permutation, a Net2Net widening)
   the two transports are one.

Which widths the merged model has is the caller's choice (``merge(width=...)``): CLAFusion fuses onto the
balanced shallow model's widths. Carried onto a wider model, a narrower one is widened exactly (``T`` copies a
neuron to ``d_0 / d_k`` targets); carried onto a narrower one, several of its neurons are averaged into one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.solvers.heads import expand
from hetsurgery.plan.stats import GroupStats, signature_agreement
from hetsurgery.plan.width_plan import GroupMatch, MatchKind

# rows of C whose squares agree to this times max C² are one point of the ground metric: C is the square root of
# a difference of moments, where float32 rounding leaves a neuron and its exact copy ~1e-4 apart (√(1e-7)) but
# their squared costs agree to the moments' own rounding
COPY_TOLERANCE = 1e-6
E = TypeVar("E", bound=enum.Enum)


class OTSolver(enum.Enum):
    """How the transport is solved: exactly (``EMD``, a linear programme) or entropically (``SINKHORN``)."""

    EMD = "emd"
    SINKHORN = "sinkhorn"


class OTMarginals(enum.Enum):
    """How much mass each side moves: ``PARTIAL`` (a narrower source sends all of its mass and the targets it
    does not reach receive none) or ``BALANCED`` (OTFusion's: every neuron of both sides sends or receives its
    share, whatever the widths)."""

    PARTIAL = "partial"
    BALANCED = "balanced"


class OTCost(enum.Enum):
    """What is compared between neurons: their activations on calibration data, or their incoming weights."""

    ACTIVATIONS = "activations"
    WEIGHTS = "weights"


def as_solver(solver: OTSolver | str) -> OTSolver:
    """``solver`` as an ``OTSolver`` (users write ``"emd"`` or ``"sinkhorn"``)."""
    return _member(OTSolver, solver, "solver")


def _member(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``kind`` (given as the member or its value); ``ValueError`` naming the choices."""
    if isinstance(value, kind):
        return value
    by_value = {m.value: m for m in kind}
    if value not in by_value:
        raise ValueError(f"unknown OT {what} {value!r}: use {' or '.join(repr(m.value) for m in kind)}")
    return by_value[value]


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


@dataclass(frozen=True)
class Neurons:
    """What tells one model's neurons apart besides the cost, to find copies: which features vary on the data
    (``live``; ``None``: all) and each neuron's own parameters (``own``: a ``channel_signature`` row each, or
    ``None``)."""

    live: torch.Tensor | None = None
    own: torch.Tensor | None = None

    @staticmethod
    def of(stats: GroupStats, k: int, signature: torch.Tensor | None = None) -> Neurons:
        """Model ``k``'s neurons in ``stats`` (and its rows of the joint ``signature``)."""
        var = stats.cov.diagonal()
        const = stats.constant if stats.constant is not None else var <= 1e-12 * float(var.max().clamp_min(1e-300))
        o = stats.offsets()
        return Neurons(~const[o[k]:o[k + 1]], None if signature is None else signature[o[k]:o[k + 1]])

    def __getitem__(self, index: torch.Tensor | slice) -> Neurons:
        return Neurons(None if self.live is None else self.live[index], None if self.own is None else self.own[index])

    def poolable(self, n: int) -> torch.Tensor:
        """Which of the ``n`` neurons may have copies: the live ones, and constant ones when they have own
        parameters to tell copies apart (constant features with none are all alike)."""
        if self.live is None or (self.own is not None and self.own.shape[1] > 0):
            return torch.ones(n, dtype=torch.bool)
        return self.live.bool().cpu()

    def same_own(self, i: int, j: int) -> bool:
        return self.own is None or torch.equal(self.own[i], self.own[j])


def point_mass(cost: torch.Tensor, neurons: Neurons = Neurons()) -> torch.Tensor:
    """Each row's share of the mass: uniform over distinct rows, the copies of one row sharing one share
    (``unit_mass`` divided by the number of distinct rows).

    Two rows are copies when their squared costs agree everywhere to ``COPY_TOLERANCE`` of the largest (one point
    of the ground metric, seen twice), both are ``neurons.poolable`` and their own parameters agree.

    >>> import torch
    >>> point_mass(torch.tensor([[1., 2.], [3., 0.], [1., 2.]])).tolist()
    [0.25, 0.5, 0.25]
    >>> point_mass(torch.tensor([[1., 2.], [3., 0.], [1., 2.]]), Neurons(torch.tensor([False, True, False]))).tolist()
    [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """
    mass = unit_mass(cost, neurons)
    return mass / mass.sum()


def unit_mass(cost: torch.Tensor, neurons: Neurons = Neurons()) -> torch.Tensor:
    """Each row's mass when every distinct row has one unit, the copies of one row sharing it (copies as
    ``point_mass`` says).

    >>> import torch
    >>> unit_mass(torch.tensor([[1., 2.], [3., 0.], [1., 2.]])).tolist()
    [0.5, 1.0, 0.5]
    """
    c = cost.detach().double().cpu().square()
    n = c.shape[0]
    tol = COPY_TOLERANCE * float(c.abs().max().clamp_min(1e-300))
    label = torch.arange(n)
    poolable = torch.nonzero(neurons.poolable(n)).flatten()
    # one random projection puts copies next to each other: only rows this close in it can be copies
    proj = c[poolable] @ torch.rand(c.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    order = torch.argsort(proj)
    rows, key = poolable[order].tolist(), proj[order].tolist()
    reach = tol * c.shape[1]
    for pos, i in enumerate(rows):
        if label[i] != i:
            continue
        for j, kj in zip(rows[pos + 1:], key[pos + 1:], strict=True):
            if kj - key[pos] > reach:
                break
            if label[j] == j and float((c[i] - c[j]).abs().max()) <= tol and neurons.same_own(i, j):
                label[j] = i
    classes, count = torch.unique(label, return_counts=True)
    size = torch.zeros(n, dtype=torch.float64).index_put_((classes,), count.double())[label]
    return 1.0 / size


class Transport(NamedTuple):
    """A coupling ``plan`` (sources × targets) and the ``capacity`` of each target: its share of the target
    model's mass, which ``plan``'s column receives in full under a balanced transport and in part or not at all
    under a partial one. Both are scaled so that ``capacity`` sums to 1."""

    plan: torch.Tensor
    capacity: torch.Tensor


def coupling(cost: torch.Tensor, solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01,
             rows: Neurons = Neurons(), cols: Neurons = Neurons(),
             marginals: OTMarginals | str = OTMarginals.PARTIAL) -> torch.Tensor:
    """The transport plan between source neurons (rows) and target neurons (columns) (``transport``'s plan).

    On equal widths with distinct neurons ``emd`` gives a permutation / d; a narrower source is carried onto
    as many targets as it has neurons, unless ``marginals="balanced"`` spreads it over all of them.

    >>> import torch
    >>> coupling(torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64)).tolist()
    [[0.0, 0.5], [0.5, 0.0]]
    >>> two_onto_four = torch.tensor([[0., 5., 1., 9.], [5., 0., 9., 1.]], dtype=torch.float64)
    >>> coupling(two_onto_four).mul(4).tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    >>> coupling(two_onto_four, marginals="balanced").mul(4).tolist()
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    """
    return transport(cost, solver, reg, rows, cols, marginals).plan


def transport(cost: torch.Tensor, solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01,
              rows: Neurons = Neurons(), cols: Neurons = Neurons(),
              marginals: OTMarginals | str = OTMarginals.PARTIAL) -> Transport:
    """The coupling of the sources (rows) with the targets (columns), and the targets' capacities.

    Every distinct neuron has one unit of mass (``unit_mass``). When the sources have less mass than the
    targets and ``marginals`` is partial, every source sends all of its mass and no target receives more than
    its own (``ot.partial``); otherwise both sides' masses are normalised and met in full (OTFusion's).
    """
    c = cost.detach().double().cpu()
    a, b = unit_mass(c, rows).numpy(), unit_mass(c.T, cols).numpy()
    total = float(b.sum())
    if as_marginals(marginals) is OTMarginals.PARTIAL and a.sum() < total * (1 - 1e-9):
        t = PARTIAL_COUPLINGS[as_solver(solver)](c.numpy(), a, b, reg)
        return Transport(torch.from_numpy(t / total), torch.from_numpy(b / total))
    t = COUPLINGS[as_solver(solver)](c.numpy(), a / a.sum(), b / total, reg)
    return Transport(torch.from_numpy(t), torch.from_numpy(b / total))


def as_marginals(marginals: OTMarginals | str) -> OTMarginals:
    """``marginals`` as an ``OTMarginals`` (users write ``"partial"`` or ``"balanced"``)."""
    return _member(OTMarginals, marginals, "marginals")


def _emd(c: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float) -> np.ndarray:
    t, log = _pot().emd(a, b, c, numItermax=max(100_000, 10 * c.size), log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"ot.emd on a {c.shape[0]}x{c.shape[1]} cost did not solve the transport: {log['warning']}")
    return np.asarray(t)


def _sinkhorn(c: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float) -> np.ndarray:
    t = np.asarray(_pot().sinkhorn(a, b, c / max(c.max(), 1e-12), reg))
    # Sinkhorn meets its marginals only to a tolerance: make every target neuron's mass exactly b_j
    return t / np.maximum(t.sum(0, keepdims=True), 1e-300) * b[None, :]


def _partial_emd(c: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float) -> np.ndarray:
    """``T 1 = a``, ``Tᵀ 1 ≤ b`` at least cost (``Σa < Σb``): POT's exact partial transport of all of ``a``."""
    t = np.asarray(_pot().partial.partial_wasserstein(a, b, c, m=float(a.sum()), numItermax=max(100_000, 10 * c.size)))
    if not np.allclose(t.sum(1), a, rtol=1e-9, atol=1e-12):
        raise RuntimeError(f"ot.partial.partial_wasserstein on a {c.shape[0]}x{c.shape[1]} cost did not move all "
                           f"of the sources' mass")
    return t


def _partial_sinkhorn(c: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float) -> np.ndarray:
    t = np.asarray(_pot().partial.entropic_partial_wasserstein(a, b, c / max(c.max(), 1e-12), reg, m=float(a.sum())))
    # met only to a tolerance: every source sends exactly a_i, no target receives more than b_j
    t = t / np.maximum(t.sum(1, keepdims=True), 1e-300) * a[:, None]
    return t / np.maximum(t.sum(0, keepdims=True) / b[None, :], 1.0)


Solve = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
COUPLINGS: Mapping[OTSolver, Solve] = MappingProxyType({OTSolver.EMD: _emd, OTSolver.SINKHORN: _sinkhorn})
PARTIAL_COUPLINGS: Mapping[OTSolver, Solve] = MappingProxyType({
    OTSolver.EMD: _partial_emd,
    OTSolver.SINKHORN: _partial_sinkhorn,
})


def _pot():  # type: ignore[no-untyped-def]
    """POT, imported on first use: it pulls in scikit-learn, which ``import hetsurgery`` should not pay for."""
    import ot
    import ot.partial

    return ot


def maps_of(t: torch.Tensor, weight: float, capacity: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, U)`` of a coupling: targets average their sources (``M = weight · (T diag(1/b))ᵀ``, ``b`` the
    targets' ``capacity``, by default what each received), sources split their outputs (``U = diag(1/a) T``).
    A target that received part of its capacity has a row of ``M`` summing to that part of ``weight``
    (``as_means`` makes every merged neuron a mean).

    >>> import torch
    >>> m, u = maps_of(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.25, 0.25]], dtype=torch.float64), 1.0)
    >>> m.tolist(), u.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    """
    cols = t.sum(0, keepdim=True) if capacity is None else capacity[None, :]
    rows = t.sum(1, keepdim=True)
    merge = weight * torch.where(cols > 0, t / cols.clamp_min(1e-300), torch.zeros_like(t)).T.contiguous()
    unmerge = torch.where(rows > 0, t / rows.clamp_min(1e-300), torch.zeros_like(t))
    return merge, unmerge


def as_means(merges: Sequence[torch.Tensor], weights: Sequence[float]) -> tuple[torch.Tensor, ...]:
    """Every merged neuron the weighted mean of the neurons that reached it: the rows of the models' ``M_k``
    divided by ``ν = Σ_k rowsum(M_k) / Σ_k α_k`` (1 where every model reached it; a row no model reached, with
    zero weights, stays zero).

    >>> import torch
    >>> [m.tolist() for m in as_means([0.5 * torch.eye(2), torch.tensor([[0.5], [0.0]])], [0.5, 0.5])]
    [[[0.5, 0.0], [0.0, 1.0]], [[0.5], [0.0]]]
    """
    reached = torch.stack([m.sum(1) for m in merges]).sum(0) / sum(weights)
    # 1 up to rounding where every model reached the neuron (a balanced transport): leave those rows exactly
    scale = torch.where((reached > 0) & ((reached - 1).abs() > 1e-12), 1 / reached.clamp_min(1e-300), 1.0)
    return tuple(m * scale[:, None] for m in merges)


def ot_match(gid: int, stats: GroupStats, blocks: Blocks, weights: Sequence[float], anchor: int = 0, *,
             solver: OTSolver | str = OTSolver.EMD, reg: float = 0.01, signature: torch.Tensor | None = None,
             orders: Sequence[torch.Tensor | None] | None = None,
             marginals: OTMarginals | str = OTMarginals.PARTIAL) -> GroupMatch:
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
        t = blockwise_coupling(feature_distance(stats, k, anchor, signature), blocks.count, solver, reg, order,
                               rows=Neurons.of(stats, k, signature), cols=Neurons.of(stats, anchor, signature),
                               inner=blocks.inner, marginals=marginals)
        merge, unmerge = maps_of(t.plan, weights[k], t.capacity)
        merges.append(merge)
        unmerges.append(unmerge)
    return GroupMatch(gid, d0, as_means(merges, weights), tuple(unmerges),
                      {"solver": solver.value, "marginals": as_marginals(marginals).value}, kind=MatchKind.OT)


def blockwise_coupling(cost: torch.Tensor, blocks: int, solver: OTSolver | str, reg: float,
                       order: torch.Tensor | None = None, *, rows: Neurons = Neurons(), cols: Neurons = Neurons(),
                       inner: bool = True, marginals: OTMarginals | str = OTMarginals.PARTIAL) -> Transport:
    """``transport`` inside each of ``blocks`` diagonal blocks (heads stay heads), each block's capacity
    ``1/blocks``; with ``order``, column block ``i`` (the anchor's head ``i``) couples with row block ``order[i]``.

    ``inner=False`` (``Blocks.inner``: a rotary embedding fixes the order of the channels inside a head) couples
    matched blocks channel by channel, in order (identity inside, the block's mass spread evenly): only whole
    heads are transported, which needs blocks of one size.

    >>> import torch
    >>> blockwise_coupling(torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64), 1, "emd", 0.0,
    ...                    inner=False).plan.mul(2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    n, m = cost.shape
    bn, bm = n // blocks, m // blocks
    if not inner and bn != bm:
        raise ValueError(f"heads whose channels keep their order (rotary embedding) are transported whole: blocks "
                         f"of {bn} and {bm} channels cannot be")
    sources = expand(order, bn) if order is not None else torch.arange(n)
    t = torch.zeros(n, m, dtype=torch.float64)
    capacity = torch.full((m,), 1 / m, dtype=torch.float64)
    for j in range(blocks):
        r, c = sources[j * bn:(j + 1) * bn], slice(j * bm, (j + 1) * bm)
        if inner:
            block = transport(cost[r, c], solver, reg, rows[r], cols[c], marginals)
            t[r, c], capacity[c] = block.plan / blocks, block.capacity / blocks
        else:
            t[r, c] = torch.eye(bn, dtype=torch.float64) / (bn * blocks)
    return Transport(t, capacity)
