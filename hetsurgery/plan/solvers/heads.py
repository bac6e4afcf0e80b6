"""Whole attention heads: which head of another model goes with each head of the anchor.

A group whose ``Blocks`` may move (``moves``) is aligned in two steps. First its heads: a LAP over the
``count x count`` head similarities, each the value of the best assignment of channels inside that pair of
heads (with ``inner=False``, rotary embeddings, the channels in order: the block's trace), summed over every
group tied to it (``PermGroup.heads_with``: the q/k and v/o sides of one attention move their heads alike).
Then the channels inside each matched pair of heads (``lap.best_permutation`` with the head order).

>>> import torch
>>> from hetsurgery.ir import Blocks
>>> score = torch.zeros(4, 4)
>>> score[0, 2] = score[1, 3] = score[2, 0] = score[3, 1] = 1.0   # head 0 of the anchor is head 1 of the other
>>> head_order([(score, Blocks(2, 2, moves=True))]).tolist()
[1, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from hetsurgery.ir import Blocks, PermGroup


def head_score(score: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """``count x count``: how well head ``j`` of the other model matches head ``i`` of the anchor."""
    from scipy.optimize import linear_sum_assignment  # costs 0.4 s to import: on first use

    c, s = blocks.count, blocks.size
    pairs = score.detach().double().cpu().reshape(c, s, c, s).permute(0, 2, 1, 3)  # [i, j] = block (i, j)
    if not blocks.inner:
        return pairs.diagonal(dim1=2, dim2=3).sum(-1)
    out = torch.empty(c, c, dtype=torch.float64)
    arr = pairs.numpy()
    for i in range(c):
        for j in range(c):
            rows, cols = linear_sum_assignment(arr[i, j], maximize=True)
            out[i, j] = float(arr[i, j][rows, cols].sum())
    return out


def head_order(scores: Sequence[tuple[torch.Tensor, Blocks]]) -> torch.Tensor:
    """The other model's head for each anchor head, best over the summed head similarities of ``scores`` (each a
    tied group's score with its blocks: T5's bias has heads of 1 beside heads of 64)."""
    from scipy.optimize import linear_sum_assignment

    total = sum(head_score(s, blocks) for s, blocks in scores)
    assert isinstance(total, torch.Tensor)
    _, cols = linear_sum_assignment(total.numpy(), maximize=True)
    return torch.from_numpy(np.asarray(cols, dtype=np.int64))


def tie_classes(groups: Iterable[PermGroup]) -> list[tuple[PermGroup, ...]]:
    """The groups whose heads move, each class of tied groups once (in group order)."""
    by_id = {g.id: g for g in groups if g.structure.moves}
    out: list[tuple[PermGroup, ...]] = []
    seen: set[int] = set()
    for gid, grp in by_id.items():
        if gid in seen:
            continue
        members = tuple(by_id[m] for m in sorted({gid, *grp.heads_with}) if m in by_id)
        seen.update(m.id for m in members)
        out.append(members)
    return out


def head_orders(groups: Iterable[PermGroup], score: Callable[[int], torch.Tensor | None]) -> dict[int, torch.Tensor]:
    """Per group with moving heads, the other model's head for each anchor head: one order per tied class,
    from the summed similarities ``score(group id)`` (``None``: the group has no score, e.g. no features)."""
    out: dict[int, torch.Tensor] = {}
    for members in tie_classes(groups):
        scores = [(g, s) for g in members if (s := score(g.id)) is not None]
        if not scores:
            continue
        order = head_order([(s, g.structure) for g, s in scores])
        out.update(dict.fromkeys((g.id for g in members), order))
    return out


def expand(order: torch.Tensor, size: int) -> torch.Tensor:
    """Channel indices that move whole blocks of ``size``: block ``i`` takes block ``order[i]``.

    >>> expand(torch.tensor([1, 0]), 2).tolist()
    [2, 3, 0, 1]
    """
    return (order[:, None] * size + torch.arange(size)).reshape(-1)
