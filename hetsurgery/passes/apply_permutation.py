"""``ApplyPermutation``: reorder the channels of groups in every tensor that holds them (a ``MapGroups`` of
permutations, after checking that they are permutations that the groups allow)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, PermGroup
from hetsurgery.passes.base import Recorded
from hetsurgery.passes.block_maps import block_order
from hetsurgery.passes.map_groups import MapGroups


@dataclass(frozen=True)
class ApplyPermutation(Recorded):
    """Permute groups: new channel ``i`` of group ``g`` is old channel ``perms[g][i]``.

    Every slot moves (weights, biases, BatchNorm running statistics, concat offsets, flattened
    features); the function of the model is unchanged.

    Before (``mlp([3], in_features=2, num_classes=1)``, group 0 = the hidden layer)::

        layers.0.weight = [[a], [b], [c]]     layers.2.weight = [[x, y, z]]

    After ``ApplyPermutation({0: tensor([2, 0, 1])})``::

        layers.0.weight = [[c], [a], [b]]     layers.2.weight = [[z, x, y]]
    """

    perms: Mapping[int, torch.Tensor]
    name: ClassVar[str] = "apply-permutation"
    exact: ClassVar[bool] = True

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        perms: dict[int, torch.Tensor] = {}
        for gid, perm in self.perms.items():
            grp = g.group(gid)
            perms[gid] = _as_indices(g, grp, perm)
            check_permutation(g, grp, perms[gid])
        moves = {gid: (p, 1.0) for gid, p in perms.items()}
        return MapGroups(moves, moves).rewrite(g)  # integer buffers move too


def _as_indices(g: ModelGraph, grp: PermGroup, perm: object) -> torch.Tensor:
    """``perm`` as a LongTensor; floats and bools are refused, never truncated (2.7 is not channel 2)."""
    t = torch.as_tensor(perm)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise PassError(f"{g.name}: the permutation for group {grp.id} ({grp.label}) has dtype {t.dtype}; "
                        "give integer channel indices (a LongTensor)")
    return t.long()


def check_permutation(g: ModelGraph, grp: PermGroup, perm: torch.Tensor) -> None:
    if not grp.perm_ok:
        raise PassError(f"{g.name}: group {grp.id} ({grp.label}) is frozen ({grp.frozen}); it cannot be permuted")
    if perm.shape != (grp.size,) or not torch.equal(perm.sort().values, torch.arange(grp.size)):
        raise PassError(f"{g.name}: the permutation for group {grp.id} is not a permutation of {grp.size} channels")
    order = block_order((perm, 1.0), grp.structure)  # blocks and head ties: MapGroups checks them all again
    if isinstance(order, str):
        raise PassError(f"{g.name}: the permutation for group {grp.id} {order}")


def random_permutations(g: ModelGraph, seed: int = 0) -> dict[int, torch.Tensor]:
    """A random permutation for every permutable group, respecting its ``Blocks``: inside every block, and of
    whole blocks where they may move (one random order of heads for all the groups tied together).

    >>> import torch, hetsurgery
    >>> g = hetsurgery.trace(hetsurgery.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4))
    >>> sorted(random_permutations(g, seed=0)[0].tolist())
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, torch.Tensor] = {}
    heads: dict[int, torch.Tensor] = {}
    for grp in g.permutable():
        b = grp.structure
        order = torch.arange(b.count)
        if b.moves:
            tied = [heads[t] for t in grp.heads_with if t in heads]
            order = tied[0] if tied else torch.randperm(b.count, generator=gen)
            heads[grp.id] = order
        inside = [torch.randperm(b.size, generator=gen) if b.inner else torch.arange(b.size) for _ in range(b.count)]
        out[grp.id] = torch.cat([order[j] * b.size + inside[j] for j in range(b.count)])
    return out
