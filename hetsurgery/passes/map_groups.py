"""``MapGroups``: groups carried by per-group maps, ``M`` on produce-side slots and ``U`` on consume-side ones; the
one way channels move, whatever moves them.

For each group ``g`` of the pass, every produce-side slot (a layer's output channels, a BatchNorm's statistics)
is multiplied by ``M`` (``r x d``) and every consume-side slot (the next layer's input channels) by ``U``
(``d x r``, given as ``Uᵀ``); the group's width becomes ``r``. A permutation is ``(perm, scale)`` and moves by
one gather; a dense map by an einsum (``ir.slot_maps``). ``ApplyPermutation`` and ``ZipNeurons`` are this pass
with one kind of map, and a width plan is one ``MapGroups`` per model (``MapGroups.carrying``): merge combines
what those carry the models to (``merging.combine``), ``align`` runs them, and assembly carries a donor into
the base's channels with one. Exact when ``U M = I`` on the features that occur (a permutation; padding with
zero channels), an approximation otherwise (zipped features).

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([3], in_features=2, num_classes=1), torch.randn(1, 2))
>>> perm = (torch.tensor([2, 0, 1]), 1.0)
>>> moved = MapGroups({0: perm}, {0: perm})(g)
>>> torch.equal(moved.params["layers.0.weight"], g.params["layers.0.weight"][[2, 0, 1]])
True
>>> zipped = MapGroups({0: torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])}, {0: torch.tensor([[1.0, 1.0, 0.0],
...                    [0.0, 0.0, 1.0]])})(g)
>>> zipped.group(0).size, tuple(zipped.params["layers.2.weight"].shape)
(2, (1, 2))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from hetsurgery.errors import PassError
from hetsurgery.ir import Capability, ModelGraph, PermGroup, SlotMaps, slots_by_param
from hetsurgery.ir.slot_maps import GroupMaps, Map, Placement, as_permutation
from hetsurgery.passes.base import Recorded
from hetsurgery.passes.block_maps import check_blocks
from hetsurgery.passes.resize import resized_groups


@dataclass(frozen=True, eq=False)
class MapGroups(Recorded):
    """Carry every group of ``produce`` / ``consume`` by its maps (``M``, and ``Uᵀ``); see the module."""

    produce: Mapping[int, Map]
    consume: Mapping[int, Map]
    name: ClassVar[str] = "map-groups"
    exact: ClassVar[bool] = False  # exact for permutations and padding; a Pipeline checks nothing here

    @staticmethod
    def carrying(groups: Mapping[int, GroupMaps], k: int, *, normalised: bool = False) -> MapGroups:
        """Model ``k``'s part of a width plan (``plan.groups``): its channels carried onto the merged ones, each
        merged channel weighted as the plan weighs model ``k`` (``normalised``: model ``k``'s mean alone)."""
        return MapGroups({gid: m.produce_map(k, normalised) for gid, m in groups.items()},
                         {gid: m.consume_map(k) for gid, m in groups.items()})

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        self.check(g)
        maps = self._slot_maps()
        by_param = slots_by_param(g.group(gid) for gid in self.produce)
        params = {name: self.carried(maps, g.params[name], slots) for name, slots in by_param.items()}
        return g.with_updates(params, self.resized(g))

    def check(self, g: ModelGraph) -> None:
        """``PassError`` unless every map fits its group: ``M`` takes the group's ``d`` channels to ``r``, ``Uᵀ`` is
        ``r x d`` too, a frozen group is only scaled in place, a width changes only where the group allows it."""
        if set(self.produce) != set(self.consume):
            raise PassError(f"{g.name}: groups {sorted(set(self.produce) ^ set(self.consume))} have a map on one "
                            "side only")
        for gid, m in self.produce.items():
            grp = g.group(gid)
            r, d = _shape(m)
            if d != grp.size or _shape(self.consume[gid]) != (r, d):
                raise PassError(f"{g.name}: group {gid} ({grp.label}) has {grp.size} channels; its maps must be "
                                f"r x {grp.size}, got {_shape(m)} and {_shape(self.consume[gid])}")
            if not grp.perm_ok and not (_scaled_identity(m) and _scaled_identity(self.consume[gid])):
                raise PassError(f"{g.name}: group {gid} ({grp.label}) is frozen ({grp.frozen}); its channels stay "
                                "where they are")
            if r != d and grp.why_not(Capability.ZIP) and grp.why_not(Capability.PAD):
                raise PassError(f"{g.name}: group {gid} ({grp.label}) cannot change its width: "
                                f"{grp.why_not(Capability.ZIP)}")
        check_blocks(g, self.produce)
        check_blocks(g, self.consume)

    def parameter(self, g: ModelGraph, name: str, maps: SlotMaps | None = None, value: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Parameter ``name`` of ``g`` carried (a fresh tensor, or ``g``'s own when no group of the pass holds it):
        what ``rewrite`` puts there, one tensor at a time (``merging.combine`` sums models this way). ``value``
        stands for ``g.params[name]`` (a streamed model's tensor, read from its checkpoint)."""
        slots = [(gid, s) for gid, s in slots_by_param(g.group(gid) for gid in self.produce).get(name, ())]
        return self.carried(maps or self._slot_maps(), g.params[name] if value is None else value, slots)

    def resized(self, g: ModelGraph) -> tuple[PermGroup, ...]:
        """``g``'s groups at the widths the pass gives them (and every slot after a resized one shifted)."""
        return resized_groups(g, {gid: _shape(m)[0] for gid, m in self.produce.items()})

    def _slot_maps(self) -> SlotMaps:
        return SlotMaps(self.produce, self.consume)

    @staticmethod
    def carried(maps: SlotMaps, t: torch.Tensor, slots: list) -> torch.Tensor:
        """``t`` with its ``slots`` carried by ``maps``: integer buffers move with permutations and are left alone
        by any other map."""
        moves = t.is_floating_point() or all(isinstance(maps.maps[s.role].get(gid), tuple) for gid, s in slots
                                              if maps.maps[s.role].get(gid) is not None)
        return maps.transform(t, slots) if slots and moves else t


def _shape(m: Map) -> tuple[int, int]:
    if isinstance(m, tuple):
        n = m[0].numel()
        return n, n
    return int(m.shape[0]), int(m.shape[1])


def _scaled_identity(m: Map) -> bool:
    p = m if isinstance(m, tuple) else m.permutation() if isinstance(m, Placement) else as_permutation(m)
    return p is not None and torch.equal(p[0].cpu(), torch.arange(p[0].numel()))

