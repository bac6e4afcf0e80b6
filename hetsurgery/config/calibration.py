"""Whether a config needs a ``calibration:`` section, checked before any work.

A config without one gets no data: the data-free methods (``average``, ``weight``, ``mal``, ``mal-pad``, ``ot``
with ``cost: weights``) and CLA's width cost need none, and the models are traced on a random example of
``input_shape``. Anything that measures activations (``permute``, ``zip``, ``ot`` on activations, a depth
plan on CKA, fused ReLUs) refuses a config without data, naming the key that needs it; so does the
BatchNorm reset (``reset_bn``) of models with BatchNorm layers. A default data set is never used silently:
it would be the wrong data for any model that is not an 8x8 digit classifier.

>>> data_needs("zip", {}, None, "cka", "add")
["width.method 'zip' measures activations"]
>>> data_needs("ot", {"cost": "weights"}, "cla", "width", "add")
[]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from hetsurgery.config.schema import DataSpec
from hetsurgery.export.errors import InputError
from hetsurgery.merging.methods import METHODS

ADD_DATA = "add a calibration: section (dataset: digits for 8x8 digits, or loader: package.module:function)"


def data_needs(method: str, options: Mapping[str, object], depth: str | None, depth_cost: str,
               balance: str | None = None, *, section: str = "width") -> list[str]:
    """What in a config measures activations on calibration data (empty: nothing does); ``section`` is the
    key of the width method (``width`` for merge, ``align`` for assemble, which has no ``balance``)."""
    needs = []
    spec = METHODS.get(method)
    if spec is not None and spec.wants_data(options):
        needs.append(f"{section}.method {method!r} measures activations")
    if depth is not None and not (depth == "cla" and depth_cost == "width"):
        needs.append(f"depth.method {depth!r} compares units by CKA on data (only cla with cost: width needs none)")
    if depth is not None and balance == "merge":
        needs.append("depth.balance 'merge' estimates each fused ReLU on data")
    return needs


def check_needs(config: Path, calibration: DataSpec | None, needs: Sequence[str]) -> None:
    """``InputError`` when something ``needs`` data and the config has no ``calibration:`` section."""
    if calibration is None and needs:
        raise InputError(f"{config}: a calibration set is required: {needs[0]}; {ADD_DATA}")


def check_batchnorm(config: Path, calibration: DataSpec | None, reset_bn: bool | int,
                    models: Sequence[tuple[str, nn.Module]]) -> None:
    """``InputError`` when ``reset_bn`` would recompute BatchNorm statistics without data to do it on."""
    if calibration is not None or not reset_bn:
        return
    for name, model in models:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise InputError(f"{config}: {name} has BatchNorm layers, whose statistics reset_bn recomputes on "
                             f"calibration data; {ADD_DATA}, or set reset_bn: false")


def random_example(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Two random examples of ``shape``: what a data-free merge traces the models on."""
    return torch.randn(2, *shape, device=device)
