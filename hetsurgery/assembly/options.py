"""The options of an assembly as one frozen value, checked once (``AssemblyOptions.of`` takes ``assemble``'s
keywords): the default selection (``layers``, ``lam``), the width method that carries a donor into the base's
channels and its options, the depth options for donors of another depth, and the rest as ``assemble`` documents
them. What needs the base (its unit keys) is checked when it is traced.

>>> AssemblyOptions.of(align="mal-pad", depth="lma").depth.method.value
'lma'
>>> AssemblyOptions.of(lam=1.5)
Traceback (most recent call last):
...
hetsurgery.errors.MergeInputError: lam must be a number in [0, 1] (0 keeps the base, 1 takes the donor), not 1.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.merging.depth_options import DepthOptions
from hetsurgery.merging.inputs import check_reset_bn
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.options import check_options, options_given

Layers = str | Sequence[str]  # "all" or unit keys of the base
Lam = float | Mapping[str, float]  # one λ for every selected unit, or one per unit


@dataclass(frozen=True)
class AssemblyOptions:
    """Everything ``assemble`` is asked besides the base, the donors and the data (see ``assemble``)."""

    layers: Layers = "all"
    lam: Lam = 0.3
    align: str = "mal"
    align_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    depth: DepthOptions | None = None
    reset_bn: bool | int = True
    example_inputs: torch.Tensor | None = field(default=None, repr=False)
    progress: bool = True
    device: torch.device | str | None = None
    base_name: str = "base"
    saveable: bool = False

    @staticmethod
    def of(*, layers: Layers = "all", lam: Lam = 0.3, align: str = "mal", depth: str | None = None,
           depth_cost: str = "cka", estimator: str = "sign_of_sum", depth_samples: int | None = 512,
           reset_bn: bool | int = True, example_inputs: torch.Tensor | None = None, progress: bool = True,
           device: torch.device | str | None = None, base_name: str = "base", saveable: bool = False,
           **align_options: object) -> AssemblyOptions:
        """The options as ``assemble``'s keywords give them, checked (``MergeInputError`` naming the bad one)."""
        check_reset_bn(reset_bn)
        if not isinstance(base_name, str) or not base_name:
            raise MergeInputError(f"base_name must be a non-empty string, not {base_name!r}")
        depth_opts = DepthOptions.of(depth, "add", depth_cost, estimator, depth_samples)
        if align not in METHODS:
            raise MergeInputError(f"unknown alignment method {align!r}: use one of {', '.join(METHODS)}")
        check_options(align, align_options)
        check_selection(layers, lam, "")
        for key, value in (("progress", progress), ("saveable", saveable)):
            if not isinstance(value, bool):
                raise MergeInputError(f"{key} must be True or False, not {value!r}")
        return AssemblyOptions(layers if isinstance(layers, str) else tuple(layers),
                               lam if not isinstance(lam, Mapping) else MappingProxyType(dict(lam)), align,
                               MappingProxyType(dict(align_options)), depth_opts, reset_bn, example_inputs, progress,
                               device, base_name, saveable)

    @staticmethod
    def given(options: AssemblyOptions | None, keywords: Mapping[str, Any]) -> AssemblyOptions:
        """``options`` as passed, or the value ``keywords`` make; never both."""
        return options_given(AssemblyOptions, options, keywords, AssemblyOptions.of)


def check_selection(layers: object, lam: object, who: str) -> None:
    """``layers`` is ``"all"`` or a list of unit keys, ``lam`` a number in [0, 1] or ``{unit key: λ}`` of them."""
    prefix = f"{who}: " if who else ""
    if isinstance(layers, str):
        if layers != "all":
            raise MergeInputError(f"{prefix}layers must be 'all' or a list of the base's unit keys, not {layers!r}")
    elif not isinstance(layers, Sequence) or not all(isinstance(u, str) for u in layers):
        raise MergeInputError(f"{prefix}layers must be 'all' or a list of the base's unit keys, not {layers!r}")
    if isinstance(lam, Mapping):
        for unit, x in lam.items():
            check_lam(x, f"{prefix}lam[{unit!r}]")
    else:
        check_lam(lam, f"{prefix}lam")


def check_lam(x: object, what: str) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0 <= x <= 1:
        raise MergeInputError(f"{what} must be a number in [0, 1] (0 keeps the base, 1 takes the donor), not {x!r}")
