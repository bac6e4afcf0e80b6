"""Statistics across processes: each rank streams its share of the calibration batches, then the ranks' accumulators
are combined, so every rank holds the statistics one process would have computed over all the batches.

Statistics are sums over samples, so data parallelism needs no more than gathering each rank's accumulator state
(its count, means, centred second moments, running minima and maxima) and combining them in rank order with
Chan's parallel update, the same rule ``BlockAccumulator`` applies batch after batch. Every rank combines the same
states in the same order, so every rank gets the same numbers. ``World`` is the set of processes: one process
(``World()``, nothing shared) or the process group ``torchrun`` started (gloo on the CPU, nccl on CUDA).

>>> import torch
>>> from hetsurgery.plan.accumulate import BlockAccumulator
>>> x = torch.randn(6, 3, 1, generator=torch.Generator().manual_seed(0))
>>> whole, halves = BlockAccumulator([3], full=True), [BlockAccumulator([3], full=True) for _ in range(2)]
>>> whole.add([x]); halves[0].add([x[:2]]); halves[1].add([x[2:]])
>>> merged = combined([state(a) for a in halves], [3], full=True)
>>> bool(torch.allclose(merged.covariance(), whole.covariance(), atol=1e-6))  # float32 samples, summed apart
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from hetsurgery.errors import InvalidInput
from hetsurgery.plan.accumulate import BlockAccumulator

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """The processes statistics are shared among: ``rank`` of ``size`` (one process by default)."""

    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: the process that plans and writes."""
        return self.rank == 0

    def share(self, data: Iterable[T]) -> Iterable[T]:
        """This rank's batches: every ``size``-th, starting at ``rank`` (all of them in a world of one)."""
        return data if self.size == 1 else _every(data, self.rank, self.size)

    def combine(self, accumulators: Mapping[Any, BlockAccumulator]) -> None:
        """Replace every accumulator's state by the combination of all ranks' (in place; nothing in a world of one)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        states = {key: state(acc) for key, acc in accumulators.items()}
        gathered: list[dict[Any, dict[str, Any]] | None] = [None] * self.size
        dist.all_gather_object(gathered, states)
        for key, acc in accumulators.items():
            merged = combined([g[key] for g in gathered if g is not None], acc.widths, acc.full)
            _load(acc, merged)

    def broadcast(self, value: T | None) -> T:
        """Rank 0's ``value`` on every rank (itself in a world of one)."""
        if self.size == 1:
            assert value is not None
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def join(distributed: bool | None, device: torch.device | str | None = None) -> World:
    """The world a merge runs in. ``None``: the process group already set up, or the one ``torchrun`` describes
    (``WORLD_SIZE`` above 1), else one process; ``True``: the same, but a world of one where nothing describes
    another; ``False``: one process whatever the environment. A group ``torchrun`` describes is joined here with gloo
    (CPU) or nccl (``device`` on CUDA)."""
    if distributed is False:
        return World()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise InvalidInput("WORLD_SIZE asks for several processes, but this torch has no torch.distributed")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def _every(data: Iterable[T], rank: int, size: int) -> Iterator[T]:
    for i, batch in enumerate(data):
        if i % size == rank:
            yield batch


def state(acc: BlockAccumulator) -> dict[str, Any]:
    """What a rank sends: its count, its absolute means, its centred second moments and running extremes (CPU)."""
    return {"n": acc.n, "mean": acc.means(), "var": [v.clone() for v in acc.var], "m2": dict(acc.m2),
            "low": list(acc.low), "high": list(acc.high)}


def combined(states: Sequence[Mapping[str, Any]], widths: Sequence[int], full: bool) -> BlockAccumulator:
    """One accumulator holding what ``states`` (in order) hold together: Chan's update state after state."""
    out = BlockAccumulator(widths, full)
    offsets = [0]
    for d in widths:
        offsets.append(offsets[-1] + d)
    n, mean = 0, torch.zeros(offsets[-1], dtype=torch.float64)
    for s in states:
        if s["n"] == 0:
            continue
        total = n + s["n"]
        delta = s["mean"] - mean
        weight = n * s["n"] / total
        for (i, j), m2 in s["m2"].items():
            di, dj = delta[offsets[i]:offsets[i + 1]], delta[offsets[j]:offsets[j + 1]]
            out.m2[(i, j)] += m2 + weight * torch.outer(di, dj)
        for k in range(len(widths)):
            dk = delta[offsets[k]:offsets[k + 1]]
            out.var[k] += s["var"][k] + weight * dk.square()
            out.low[k] = torch.minimum(out.low[k], s["low"][k])
            out.high[k] = torch.maximum(out.high[k], s["high"][k])
        mean = mean + delta * (s["n"] / total)
        n = total
    out.n = n
    if n:  # the means are held absolute: the shift is zero
        out.shift = [torch.zeros(d, dtype=torch.float32) for d in widths]
        out.mean = [mean[offsets[k]:offsets[k + 1]].clone() for k in range(len(widths))]
    out.tracking = [bool((lo == hi).any()) for lo, hi in zip(out.low, out.high, strict=True)]
    return out


def _load(acc: BlockAccumulator, other: BlockAccumulator) -> None:
    for attr in ("n", "shift", "mean", "var", "m2", "low", "high", "tracking"):
        setattr(acc, attr, getattr(other, attr))
