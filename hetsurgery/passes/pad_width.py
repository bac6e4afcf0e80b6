"""``PadWidth``: zero-pad a group to a larger width (Model Assembly Learning's zero padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, owner_of
from hetsurgery.ir.slot_algebra import pad_slot
from hetsurgery.passes.resize import resized_groups

# new channels of a BatchNorm pass zeros through unchanged: mean 0, variance 1, scale 1, shift 0
_FILL: dict[tuple[type[nn.Module], str], float] = {
    (nn.modules.batchnorm._NormBase, "running_var"): 1.0,
    (nn.modules.batchnorm._NormBase, "weight"): 1.0,
}


@dataclass(frozen=True)
class PadWidth:
    """Grow group ``group`` to ``size`` channels; the model computes exactly the same function.

    New producer rows and biases are zero, new consumer columns are zero, new BatchNorm channels are
    inert. Refused where ``pad_ok`` is false: a consumer normalises or reduces over the channels
    (LayerNorm, softmax, a mean over channels), the channels come in blocks, or the width is spelled
    as a number in the code.

    Before (``mlp([2])``, group 0): ``layers.0.weight`` is 2x4, ``layers.2.weight`` is 10x2.
    After ``PadWidth(0, 3)``: ``layers.0.weight`` is 3x4 with a zero last row, ``layers.2.weight`` is
    10x3 with a zero last column.
    """

    group: int
    size: int
    name: ClassVar[str] = "pad-width"

    def __call__(self, g: ModelGraph) -> ModelGraph:
        grp = g.group(self.group)
        if not grp.pad_ok:
            raise PassError(f"{g.name}: cannot pad group {grp.id} ({grp.label}): {grp.why_not('pad')}. "
                            "Pick a group whose `pad` column in ModelGraph.summary() says y.")
        if self.size < grp.size:
            raise PassError(f"{g.name}: PadWidth only grows group {grp.id} ({grp.size} channels), not to {self.size}; "
                            "use ZipNeurons to shrink it")
        modules = dict(g.module.named_modules())
        new: dict[str, torch.Tensor] = {}
        for slot in sorted(grp.slots, key=lambda s: -s.offset):  # later offsets first: they do not move
            fill = _fill_for(modules.get(owner_of(slot.param)), slot.param.rsplit(".", 1)[-1])
            new[slot.param] = pad_slot(new.get(slot.param, g.params[slot.param]), slot, grp.size, self.size, fill)
        return g.with_updates(new, resized_groups(g, {grp.id: self.size}))


def _fill_for(module: nn.Module | None, attr: str) -> float:
    for (kind, name), value in _FILL.items():
        if isinstance(module, kind) and attr == name:
            return value
    return 0.0
