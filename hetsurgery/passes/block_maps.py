"""Maps that respect a group's blocks: what ``MapGroups`` (every merge, ``align``, ``assemble``, ``ApplyPermutation``)
checks before it moves a channel.

A group of ``Blocks(count, size)`` may only be carried block to block: merged block ``i`` is made from one block
``order[i]`` of the model's group (its heads matched), the same block when blocks may not move (``moves``
false), and inside each block any map, or, with ``inner=False`` (rotary embeddings), the channels in order (a
scaled identity). Where whole heads are zipped (heads of different counts, ``solvers.head_cluster``) a merged block
may draw on several blocks and the number of blocks may change, but each block feeds one merged block at most.
Groups whose heads move together (``PermGroup.heads_with``) take one order (send each head to the same merged
head); a group with no map stays in place.

>>> import torch
>>> from hetsurgery.ir import Blocks
>>> block_order(torch.eye(4)[[2, 3, 0, 1]], Blocks(2, 2, moves=True)).tolist()
[1, 0]
>>> block_order(torch.eye(4)[[3, 2, 1, 0]], Blocks(2, 2, moves=True, inner=False))
'reorders channels inside its blocks, whose order is fixed (rotary position embedding)'
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import Blocks, ModelGraph
from hetsurgery.ir.slot_maps import Map, Placement


def block_order(m: Map, blocks: Blocks) -> torch.Tensor | str:
    """Which source block each merged block of ``m`` (``r x d``) is made from, or why ``m`` does not respect
    ``blocks``; for a map that zips whole blocks (several source blocks in one merged block, or another number of
    blocks), the ``merged x source`` matrix of the blocks it uses."""
    c, s = blocks.count, blocks.size
    if isinstance(m, Placement):
        m = m.permutation() or m.dense()
    if isinstance(m, tuple):  # a scaled permutation: read off its indices
        return _permutation_order(m[0].cpu(), blocks)
    dense = m.detach().cpu()
    if dense.shape[1] != c * s or dense.shape[0] % s:
        return f"changes the width of its {c} blocks of {s}"
    n = dense.shape[0] // s
    pairs = dense.reshape(n, s, c, s).permute(0, 2, 1, 3)  # [i, j] = merged block i from source block j
    used = pairs.abs().sum((2, 3)) > 0
    if not bool((used.sum(0) <= 1).all()):
        return f"mixes channels of its {c} blocks of {s}"
    if n != c or not bool((used.sum(1) <= 1).all()):
        return _clustered(pairs, used, blocks)
    order = torch.where(used.any(1), used.float().argmax(1), torch.arange(c))
    if torch.unique(order).numel() != c:
        return f"mixes channels of its {c} blocks of {s}"
    if not blocks.moves and not torch.equal(order, torch.arange(c)):
        return f"moves channels between its {c} blocks of {s}"
    if not blocks.inner:
        inside = pairs[torch.arange(c), order]
        if bool((inside - torch.diag_embed(inside.diagonal(dim1=1, dim2=2))).abs().gt(0).any()):
            return "reorders channels inside its blocks, whose order is fixed (rotary position embedding)"
    return order


def _clustered(pairs: torch.Tensor, used: torch.Tensor, blocks: Blocks) -> torch.Tensor | str:
    """A map that zips whole blocks (heads of different counts, ``solvers.head_cluster``): each source block feeds
    one merged block at most, a merged block may draw on several; its ``merged x source`` use of blocks."""
    c, s = blocks.count, blocks.size
    if not blocks.moves:
        return f"moves channels between its {c} blocks of {s}"
    if not blocks.inner:
        for i, j in used.nonzero().tolist():
            inside = pairs[i, j]
            if bool((inside - torch.diag_embed(inside.diagonal())).abs().gt(0).any()):
                return "reorders channels inside its blocks, whose order is fixed (rotary position embedding)"
    return used


def _destinations(order: torch.Tensor, count: int) -> torch.Tensor:
    """For each source block, the merged block it goes to (-1: none), from a ``block_order`` answer."""
    if order.dim() == 2:
        return torch.where(order.any(0), order.float().argmax(0), torch.full((count,), -1))
    out = torch.full((count,), -1)
    out[order] = torch.arange(order.numel())
    return out


def check_blocks(g: ModelGraph, maps: Mapping[int, Map]) -> None:
    """``PassError`` unless every map respects its group's blocks and tied groups take one order of heads."""
    orders: dict[int, torch.Tensor] = {}
    for gid, m in maps.items():
        grp = g.group(gid)
        if grp.structure.count == 1:
            continue
        order = block_order(m, grp.structure)
        if isinstance(order, str):
            raise PassError(f"{g.name}: the map of group {gid} ({grp.label}) {order}")
        orders[gid] = order
    for gid, order in orders.items():
        grp = g.group(gid)
        for other in grp.heads_with:
            theirs = orders.get(other, torch.arange(grp.structure.count))
            if order.dim() == 2 or theirs.dim() == 2:  # heads zipped: each source head to one merged head
                mine, yours = _destinations(order, grp.structure.count), _destinations(theirs, grp.structure.count)
                both = (mine >= 0) & (yours >= 0)
                same = mine.shape == yours.shape and torch.equal(mine[both], yours[both])
            else:
                same = torch.equal(order, theirs)
            if not same:
                raise PassError(f"{g.name}: groups {gid} ({grp.label}) and {other} ({g.group(other).label}) are "
                                "the two sides of the same attention heads; move their heads alike")


def _permutation_order(perm: torch.Tensor, blocks: Blocks) -> torch.Tensor | str:
    c, s = blocks.count, blocks.size
    if perm.numel() != c * s:
        return f"changes the width of its {c} blocks of {s}"
    order = blocks.order_of(perm)
    if not bool((perm.view(c, s) // s == order[:, None]).all()):
        return f"mixes channels of its {c} blocks of {s}"
    if not blocks.moves and not torch.equal(order, torch.arange(c)):
        return f"moves channels between its {c} blocks of {s}"
    if not blocks.inner and not torch.equal(perm % s, torch.arange(c * s) % s):
        return "reorders channels inside its blocks, whose order is fixed (rotary position embedding)"
    return order
