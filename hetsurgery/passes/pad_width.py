"""``PadWidth``: zero-pad a group to a larger width (Model Assembly Learning's zero padding)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn

from hetsurgery.errors import PassError
from hetsurgery.ir import Capability, ModelGraph, owner_of, pad_params
from hetsurgery.ir.lazy import read_rows, shape_of
from hetsurgery.passes.base import Recorded
from hetsurgery.passes.resize import resized_groups

# New BatchNorm channels see zeros and give zeros: scale, shift and mean 0 like every padded entry (zero
# padding in the literal sense, so weight matching sees nothing there), variance 1 so the division is tame.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_NONZERO_FILL = MappingProxyType({"running_var": 1.0})


@dataclass(frozen=True)
class PadWidth(Recorded):
    """Grow group ``group`` to ``size`` channels; the model computes exactly the same function.

    New producer rows and biases are zero, new consumer columns are zero, new BatchNorm channels are
    inert (scale, shift and mean zero, variance one). Refused where ``pad_ok`` is false: a consumer normalises or reduces over the channels
    (LayerNorm, softmax, a mean over channels), the channels come in blocks, or the width is spelled
    as a number in the code.

    Before (``mlp([2])``, group 0): ``layers.0.weight`` is 2x4, ``layers.2.weight`` is 10x2.
    After ``PadWidth(0, 3)``: ``layers.0.weight`` is 3x4 with a zero last row, ``layers.2.weight`` is
    10x3 with a zero last column.
    """

    group: int
    size: int
    name: ClassVar[str] = "pad-width"
    exact: ClassVar[bool] = True

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        return pad_groups(g, {self.group: self.size})


def pad_groups(g: ModelGraph, sizes: Mapping[int, int]) -> ModelGraph:
    """``PadWidth`` for several groups at once (``{group: size}``): one new graph, not one per group."""
    groups = []
    for gid, size in sizes.items():
        grp = g.group(gid)
        if not grp.pad_ok:
            raise PassError(f"{g.name}: cannot pad group {grp.id} ({grp.label}): {grp.why_not(Capability.PAD)}. "
                            "Pick a group whose `pad` column in ModelGraph.summary() says y.")
        if not isinstance(size, int) or isinstance(size, bool):
            raise PassError(f"{g.name}: PadWidth takes a whole number of channels, not {size!r}")
        if size < grp.size:
            raise PassError(f"{g.name}: PadWidth only grows group {grp.id} ({grp.size} channels), not to {size}; "
                            "use ZipNeurons to shrink it")
        groups.append(grp)
    if not groups:
        return g
    modules = dict(g.module.named_modules())
    new = pad_params(g.params, groups, dict(sizes), lambda param: _fill_for(modules, param))
    return g.with_updates(new, resized_groups(g, dict(sizes)))


def padded_view(g: ModelGraph, values: Mapping[str, torch.Tensor], sizes: Mapping[int, int]
                ) -> Mapping[str, torch.Tensor]:
    """What ``pad_groups(g, sizes).params`` holds, each tensor padded when it is read from ``values`` (``g``'s
    parameter values by name, read on demand: a streamed model's). ``pad_groups`` checks the sizes."""
    return _Padded(g, values, sizes)


class _Padded(Mapping[str, torch.Tensor]):
    def __init__(self, g: ModelGraph, values: Mapping[str, torch.Tensor], sizes: Mapping[int, int]) -> None:
        self.source, self.sizes = values, dict(sizes)
        self.groups = [g.group(gid) for gid in sizes]
        self.modules = dict(g.module.named_modules())
        self.padded = {s.param for grp in self.groups for s in grp.slots}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.padded:
            return self.source[name]
        return self._pad(name, self.source[name])

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self.source

    def rows(self, name: str, rows: tuple[int, int]) -> torch.Tensor:
        """Rows of the padded tensor: those of the source, padded (``shape`` says which tensors read by rows)."""
        if name not in self.padded:
            return read_rows(self.source, name, rows)
        if self._rows_move(name):
            return self[name][rows[0]:rows[1]]
        return self._pad(name, read_rows(self.source, name, rows))

    def shape(self, name: str) -> torch.Size | None:
        """The padded shape when the tensor reads by rows; ``None`` when padding adds rows (it is read whole)."""
        shape = shape_of(self.source, name)
        if shape is None or name not in self.padded:
            return shape
        return None if self._rows_move(name) else self._pad(name, torch.empty(shape, device="meta")).shape

    def _rows_move(self, name: str) -> bool:
        return any(s.dim == 0 for grp in self.groups for s in grp.slots if s.param == name)

    def _pad(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return pad_params({name: t}, self.groups, self.sizes, lambda param: _fill_for(self.modules, param),
                          names=(name,))[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _fill_for(modules: Mapping[str, nn.Module], param: str) -> float:
    if not isinstance(modules.get(owner_of(param)), _BATCH_NORMS):
        return 0.0
    return _NONZERO_FILL.get(param.rsplit(".", 1)[-1], 0.0)
