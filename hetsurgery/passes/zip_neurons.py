"""``ZipNeurons``: apply a merge ``M`` (``r x d``) and unmerge ``U`` (``d x r``) to a group; width becomes ``r``.
A ``MapGroups`` of one group, after checking that the group may be zipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import Capability, ModelGraph
from hetsurgery.passes.base import Recorded
from hetsurgery.passes.map_groups import MapGroups


@dataclass(frozen=True, eq=False)
class ZipNeurons(Recorded):
    """Producer-side slots become ``M @ W``, consumer-side slots ``W @ U``; the group's width becomes ``r``.

    Exact when ``U M = I`` on the features that occur (a permutation, or dropping channels that are
    always zero); otherwise an approximation, as in ZipIt!.

    Before: group 0 of ``mlp([3])`` has 3 channels. After ``ZipNeurons(0, M, U)`` with ``M = [[.5, .5, 0],
    [0, 0, 1]]`` and ``U = Mᵀ > 0``: 2 channels, the first the mean of the old channels 0 and 1.
    """

    group: int
    merge: torch.Tensor
    unmerge: torch.Tensor
    name: ClassVar[str] = "zip-neurons"
    exact: ClassVar[bool] = False

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        grp = g.group(self.group)
        r, d = self.merge.shape
        if not grp.zip_ok:
            raise PassError(f"{g.name}: cannot zip group {grp.id} ({grp.label}): {grp.why_not(Capability.ZIP)}")
        if d != grp.size or tuple(self.unmerge.shape) != (d, r):
            raise PassError(f"{g.name}: group {grp.id} has {grp.size} channels; merge must be r x {grp.size} and "
                            f"unmerge {grp.size} x r, got {tuple(self.merge.shape)} and {tuple(self.unmerge.shape)}")
        return MapGroups({grp.id: self.merge}, {grp.id: self.unmerge.T}).rewrite(g)
