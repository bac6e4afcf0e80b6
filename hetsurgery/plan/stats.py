"""Streaming calibration statistics: per group, the mean and joint covariance of all models' features.

For a group of widths ``d_0 … d_{K-1}`` the features at the group's sites are concatenated as
``[model 0 | model 1 | …]`` (``D = Σ d_k`` columns); every other axis (batch, spatial positions, tokens,
the ``inner`` positions after a flatten) counts as samples. All models run together in one joint graph
(``plan.joint``), each site's features are folded into ``plan.accumulate`` as soon as they exist, and
nothing is stored per sample.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([6], in_features=4, num_classes=2), torch.randn(2, 4))
>>> stats = collect_stats([g, g], [torch.randn(32, 4)], progress=False)
>>> stats[0].cov.shape   # group 0 (the hidden layer) of both models side by side
torch.Size([12, 12])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import fx

from hetsurgery.errors import HetsurgeryError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input, with_progress
from hetsurgery.plan.accumulate import BlockAccumulator, Scratch, assemble
from hetsurgery.plan.distributed import World
from hetsurgery.plan.joint import Observer, joint_module, site_view, sites_by_node

# How the joint graph runs over the batches: (joint module, batches, device, progress, finished). The default moves the
# module to the device and runs it batch after batch; a streamed model runs it block by block
# (``hetsurgery.stream.segments``) and calls ``finished`` with the sites it has observed on every batch.
Finished = Callable[[Iterable[str]], None]
Runner = Callable[[fx.GraphModule, Iterable, "torch.device | str | None", bool, Finished], None]
Done = Callable[[int, "GroupStats"], None]

TIE = 1e-5  # the weight of the signature among live features: it decides only between near-equal correlations
ROWS = 1 << 20  # elements of a similarity block made at once


def signature_agreement(sig: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - normalised distance`` between rows of ``sig`` (``D x p``) and rows of ``other`` (default ``sig``): 1
    exactly for identical rows."""
    s = sig.double()
    t = s if other is None else other.double()
    dist = torch.cdist(s, t)
    norm_s, norm_t = s.norm(dim=1), t.norm(dim=1)
    denom = (norm_s[:, None] + norm_t[None, :]).clamp_min_(1e-12)
    dist.div_(denom)  # in place: two D x D matrices at most (5632 channels: 254 MB each), not five
    del denom
    return dist.clamp_(0, 1).neg_().add_(1.0)


@dataclass(frozen=True)
class GroupStats:
    """Mean (``D``) and covariance (``D x D``) of the concatenated features of one group, over ``count`` samples.

    Statistics without the blocks inside each model (``complete=False``: what LAP and OT read) may hold the covariance
    as its ``blocks`` between models and the ``variance`` instead of the ``D x D`` ``matrix``, which ``cov`` then
    assembles once, when something asks for it: ``similarity_block`` does not. For two models of 5632 channels that is
    the 254 MB block instead of a 1 GB matrix."""

    widths: tuple[int, ...]
    count: int
    mean: torch.Tensor
    matrix: torch.Tensor | None  # the covariance; None: ``blocks`` and ``variance`` stand for it
    complete: bool = True  # False: the blocks inside each model hold only the variances
    constant: torch.Tensor | None = None  # per feature: took one value on every sample
    blocks: Mapping[tuple[int, int], torch.Tensor] | None = None  # (i, j), i < j: between models i and j
    variance: torch.Tensor | None = None  # with blocks: the D variances
    # handed over to be solved once (a streamed pass lets them go when the group is solved): ``similarity_block``
    # is made in the memory of the block it comes from, which these statistics then no longer hold
    single_use: bool = False

    @property
    def cov(self) -> torch.Tensor:
        """The ``D x D`` covariance (assembled from ``blocks`` the first time it is asked for, and kept)."""
        if self.matrix is None:
            assert self.blocks is not None and self.variance is not None
            if self._spent():
                raise HetsurgeryError("these single-use statistics made similarities over their covariance blocks: the "
                                      "covariance is no longer held")
            object.__setattr__(self, "matrix", assemble(self.widths, self.blocks, self.variance))  # a cache
        assert self.matrix is not None
        return self.matrix

    def variances(self) -> torch.Tensor:
        """The ``D`` variances (the covariance's diagonal)."""
        return self.variance if self.matrix is None and self.variance is not None else self.cov.diagonal()

    def cross(self, i: int, j: int) -> torch.Tensor:
        """The covariance between model ``i``'s features (rows) and model ``j``'s (columns)."""
        if (i, j) in self._spent() or (j, i) in self._spent():
            raise HetsurgeryError(f"the covariance between models {i} and {j} was made into their similarity "
                                  "(single-use statistics): it is no longer held")
        if self.matrix is None and self.blocks is not None and i != j:
            return self.blocks[(i, j)] if (i, j) in self.blocks else self.blocks[(j, i)].T
        return self.block(self.cov, i, j)

    def offsets(self) -> list[int]:
        out = [0]
        for d in self.widths:
            out.append(out[-1] + d)
        return out

    def corr(self) -> torch.Tensor:
        """Pearson correlation; a feature with zero variance correlates 0 with everything (never NaN).

        With ``complete=False`` only the blocks between different models (and the diagonal) are meaningful.
        """
        std = self.cov.diagonal().clamp_min(0).sqrt()
        denom = std[:, None] * std[None, :]
        return torch.where(denom > 0, self.cov / denom.clamp_min(1e-300), torch.zeros((), dtype=self.cov.dtype))

    def constant_pairs(self) -> torch.Tensor:
        """``D x D`` mask: both features are constant on the data, with the same value."""
        var = self.cov.diagonal()
        const = self.constant if self.constant is not None else var <= 1e-12 * float(var.max().clamp_min(1e-300))
        same = (self.mean[:, None] - self.mean[None, :]).abs() <= 1e-6 * (1 + self.mean.abs().max())
        return const[:, None] & const[None, :] & same

    def similarity(self, signature: torch.Tensor | None = None) -> torch.Tensor:
        """Correlation for matching, with constant features made comparable.

        Two constant features with the same value (dead ReLUs, zero padding) look alike to any
        activation statistic. They score just below 1, and exactly 1 when their ``signature`` rows (the
        channels' own per-channel parameters, ``channel_signature``) agree too: a dead unit then pairs
        with its copy rather than with padding or another dead unit, and live pairs still come first.
        Live features can tie too: two ReLUs that fire on one and the same sample only are perfectly
        correlated, with each other and with both their copies. The signature breaks such ties as well
        (``TIE`` times its agreement, far below any difference of correlation that carries information and
        far above the float error of a correlation of 1), and correlations are clipped to ``[-1, 1]``.
        """
        k = len(self.widths)
        return torch.cat([torch.cat([self.similarity_block(i, j, signature) for j in range(k)], 1) for i in range(k)])

    def similarity_block(self, i: int, j: int, signature: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(model i, model j)`` block of ``similarity(signature)`` (which is made of them), without any ``D x D``
        matrix and a few rows at a time: for two models of 5632 channels the 254 MB block and nothing else of its
        size. Single-use statistics write it over their covariance block (nothing of its size at all), and give it
        again when asked with the same signature."""
        spent = self._spent()
        if (i, j) in spent:  # single use: made once, over the block it came from
            made, sig = spent[(i, j)]
            if not ((sig is None and signature is None) or
                    (sig is not None and signature is not None and torch.equal(sig, signature))):
                raise HetsurgeryError(f"the similarity of models {i} and {j} was made with another signature, "
                                      "over the covariance it came from (single-use statistics)")
            return made
        o = self.offsets()
        a, b = slice(o[i], o[i + 1]), slice(o[j], o[j + 1])
        var = self.variances()
        std = var.clamp_min(0).sqrt()
        const = self.constant if self.constant is not None else var <= 1e-12 * float(var.max().clamp_min(1e-300))
        tied = bool(const[a].any()) and bool(const[b].any())  # constant features of one value pair up
        bound = 1e-6 * (1 + self.mean.abs().max())
        cross = self.cross(i, j)
        # each row block reads only its own elements of ``cross``: the similarity may be written over it
        over = self.single_use and self.matrix is None and i != j
        sim = cross if over else torch.empty_like(cross)
        step = max(1, ROWS // max(1, cross.shape[1]))
        for lo in range(0, cross.shape[0], step):
            r = slice(o[i] + lo, min(o[i + 1], o[i] + lo + step))
            denom = std[r, None] * std[None, b]
            dead = denom <= 0
            rows = torch.div(cross[lo:lo + step], denom.clamp_min_(1e-300), out=sim[lo:lo + step])
            rows.masked_fill_(dead, 0.0).clamp_(-1.0, 1.0)
            both = None
            if tied:
                both = const[r, None] & const[None, b] & ((self.mean[r, None] - self.mean[None, b]).abs() <= bound)
            agreement = None if signature is None else signature_agreement(signature[r], signature[b])
            ties = None
            if both is not None and bool(both.any()):
                ties = (1.0 - 1e-4) + (0.0 if agreement is None else 1e-4 * agreement[both])
            if agreement is not None:
                rows += agreement.mul_(TIE)  # (TIE * agreement) rounded as in similarity, without another matrix
            if both is not None and ties is not None:
                rows[both] = ties
        if over:
            spent[(i, j)] = (sim, signature)
        return sim

    def _spent(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]]:
        """The similarity blocks made over their covariance blocks (single use), by model pair."""
        spent = self.__dict__.get("_spent_blocks")
        if spent is None:
            spent = {}
            object.__setattr__(self, "_spent_blocks", spent)
        return spent

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` (for euclidean distances between features)."""
        return self.cov * (self.count - 1) / max(self.count, 1) + self.mean[:, None] * self.mean[None, :]

    def block(self, m: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The ``(model i, model j)`` block of a ``D x D`` matrix."""
        o = self.offsets()
        return m[o[i]:o[i + 1], o[j]:o[j + 1]]


def collect_stats(graphs: Sequence[ModelGraph], data: Iterable, *, groups: Sequence[int] | None = None,
                  full: bool = True, memory_budget: int | None = None, progress: bool = True,
                  device: torch.device | str | None = None, world: World | None = None,
                  runner: Runner | None = None, done: Done | None = None,
                  shortcuts: Sequence[Mapping[str, str]] = (),
                  initial: Mapping[int, BlockAccumulator] | None = None) -> dict[int, GroupStats]:
    """Run all models over ``data`` once (or once per chunk of groups under ``memory_budget`` bytes).

    ``graphs`` must share their groups (same topology, widths may differ). Batches are tensors or
    ``(inputs, labels)`` pairs. Groups without sites (inside ``nn.MultiheadAttention``) are skipped.
    ``full=False`` computes only what LAP and OT read: cross-model blocks and variances. The models run
    on ``device`` (default: where their parameters are), batches are moved there; results are on the CPU.
    In a ``world`` of several processes each runs its share of the batches and the accumulators are combined
    (``plan.distributed``): every rank gets the statistics of all the batches. ``runner`` runs the joint graph over
    the batches (default: whole, batch after batch). With ``done``, each group's statistics are handed to it as soon
    as the runner has observed its last site on every batch (a streamed model's block-local groups, one block after
    another), and released: they are not in the result. ``shortcuts`` (per model, a node that returns an input
    unchanged -> that input: ``joint_module``) skip what computes nothing the statistics need. ``initial`` (per
    group, what earlier samples gave) is where the pass starts (``merging.one_pass``).
    """
    ref = graphs[0]
    wanted = [gid for gid in (groups if groups is not None else [g.id for g in ref.permutable()])
              if ref.group(gid).sites]
    out: dict[int, GroupStats] = {}
    for chunk in _chunks(graphs, wanted, memory_budget):
        out.update(_one_pass(graphs, data, chunk, full, progress, device, world or World(), runner or run_whole,
                             done, shortcuts, initial or {}))
    return out


def _chunks(graphs: Sequence[ModelGraph], gids: list[int], budget: int | None) -> list[list[int]]:
    if budget is None:
        return [gids] if gids else []
    chunks: list[list[int]] = [[]]
    used = 0
    for gid in gids:
        dim = sum(g.group(gid).size for g in graphs)
        cost = 16 * dim * dim  # the float64 accumulator and one float64 copy while finishing
        if cost > budget:
            raise HetsurgeryError(f"group {gid} alone needs {cost} bytes of statistics; memory_budget is {budget}")
        if used + cost > budget and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(gid)
        used += cost
    return chunks


def run_whole(joint: fx.GraphModule, data: Iterable, device: torch.device | str | None, progress: bool,
              finished: Finished | None = None) -> None:
    """The joint graph on ``device`` (default: where its parameters are), batch after batch."""
    if device is not None:
        joint.to(device)
    held = next(itertools.chain(joint.parameters(), joint.buffers()), None)
    target = device if device is not None else held.device if held is not None else None
    with torch.no_grad():
        for batch in with_progress(data, "statistics", progress):
            joint(*model_input(batch, input_names(joint)).to(target))


def _one_pass(graphs: Sequence[ModelGraph], data: Iterable, gids: list[int], full: bool, progress: bool,
              device: torch.device | str | None, world: World, run: Runner, done: Done | None,
              shortcuts: Sequence[Mapping[str, str]] = (), initial: Mapping[int, BlockAccumulator] | None = None
              ) -> dict[int, GroupStats]:
    where = sites_by_node(graphs, gids)
    sizes = {gid: [g.group(gid).size for g in graphs] for gid in gids}
    scratch = Scratch()  # the sites are folded in one after another: one set of buffers for all groups
    acc: dict[int, BlockAccumulator] = {}  # made at a group's first site: only the groups in flight hold memory
    for gid in gids:
        if initial and gid in initial:
            acc[gid] = initial[gid]
            acc[gid].scratch = scratch
    pending = set(gids)

    def sink(node: str, outs: Sequence[torch.Tensor]) -> None:
        for gid, sites in where[node]:
            a = acc.get(gid)
            if a is None:
                a = acc[gid] = BlockAccumulator(sizes[gid], full, scratch)
            a.add([site_view(o, s, d) for o, s, d in zip(outs, sites, sizes[gid], strict=True)])

    joint = joint_module(graphs, set(where), Observer(sink), shortcuts)
    observed = [str(n.args[0]) for n in joint.graph.nodes if n.op == "call_module" and n.target == "observer"]
    last = {gid: node for node in observed for gid, _ in where[node]}  # in the order they run: the last wins
    result: dict[int, GroupStats] = {}

    def finish(gids: Iterable[int]) -> None:
        ready = {gid: acc.pop(gid) if gid in acc else BlockAccumulator(sizes[gid], full, scratch) for gid in sorted(gids)
                 if gid in pending}  # a rank given no batches has none: it sends an empty one
        pending.difference_update(ready)
        world.combine(ready)
        for gid in list(ready):
            a = ready.pop(gid)  # the accumulator goes before the group is solved: one D^2 less held meanwhile
            if a.n < 2:
                raise HetsurgeryError(f"group {gid}: fewer than two calibration samples; give more data")
            if full:
                s = GroupStats(tuple(sizes[gid]), a.n, a.means(), a.covariance(), constant=a.constant())
            else:
                blocks, var = a.parts(spend=True)
                s = GroupStats(tuple(sizes[gid]), a.n, a.means(), None, complete=False, constant=a.constant(),
                               blocks=blocks, variance=var, single_use=done is not None)  # done solves them once
            del a
            if done is None:
                result[gid] = s
            else:
                done(gid, s)

    def finished(nodes: Iterable[str]) -> None:
        seen = set(nodes)
        finish(gid for gid, node in last.items() if node in seen)

    run(joint, world.share(data), device, progress, finished)
    finish(list(pending))
    return result

