"""What the caller gives ``merge`` and ``assemble``, checked before any work: the models (and what to call them),
the merge weights, ``reset_bn``, finite weights, a first batch to trace on, where to run, and whether a package
could hold the result.

>>> from torch import nn
>>> model_names([nn.Linear(2, 2), nn.ReLU()], None)
['model 0 (Linear)', 'model 1 (ReLU)']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from hetsurgery.errors import MergeInputError
from hetsurgery.export.saveable import why_not_saveable
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import example_of

BN_RESET_SAMPLES = 512  # BatchNorm statistics settle well within a few hundred images (see BENCHMARKS.md)


def default_device(device: torch.device | str | None) -> torch.device | str | None:
    """The device for forward passes: the one asked for, else CUDA when present, else the models' own."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else None


def merge_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The models' weights, normalised to sum to 1 (uniform by default); ``MergeInputError`` for bad ones."""
    if weights is None:
        return [1.0 / n] * n
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                  for x in weights)
    if len(weights) != n or not numbers or sum(weights) <= 0:
        raise MergeInputError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(x) / total for x in weights]


def model_names(models: object, names: Sequence[str] | None) -> list[str]:
    """What messages call each model: ``names`` (checked), else ``model k (ClassName)``; ``MergeInputError``
    unless ``models`` is a list of ``nn.Module``s.

    >>> model_names([nn.Linear(2, 2), nn.ReLU()], None)
    ['model 0 (Linear)', 'model 1 (ReLU)']
    >>> model_names([nn.Linear(2, 2), "b.pt"], None)
    Traceback (most recent call last):
    ...
    hetsurgery.errors.MergeInputError: model 1 is a str ('b.pt'), not an nn.Module: build the model and load its weights first (hetsurgery.export.load_weights)
    """
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or isinstance(models, str):
        raise MergeInputError(f"models must be a list of nn.Modules, not a {type(models).__name__}")
    for k, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise MergeInputError(f"model {k} is a {type(m).__name__} ({m!r:.60}), not an nn.Module: build the model "
                                  "and load its weights first (hetsurgery.export.load_weights)")
    if names is None:
        return [f"model {k} ({type(m).__name__})" for k, m in enumerate(models)]
    if isinstance(names, str) or len(names) != len(models) or not all(isinstance(n, str) and n for n in names):
        raise MergeInputError(f"names must be {len(models)} non-empty strings, one per model, not {names!r}")
    return list(names)


def check_reset_bn(reset_bn: object, name: str = "reset_bn") -> None:
    """``reset_bn`` (or the option ``name``) is ``True``, ``False`` or a whole number of samples (at least 2).

    >>> check_reset_bn(1.5)
    Traceback (most recent call last):
    ...
    hetsurgery.errors.MergeInputError: reset_bn must be True, False or a whole number of samples (at least 2), not 1.5
    """
    if isinstance(reset_bn, bool) or (isinstance(reset_bn, int) and reset_bn >= 2):
        return
    raise MergeInputError(f"{name} must be True, False or a whole number of samples (at least 2), not {reset_bn!r}")


def check_saveable(graphs: Sequence[ModelGraph]) -> None:
    """``MergeInputError`` naming the model when a package could not hold it (``export.why_not_saveable``)."""
    for g in graphs:
        why = why_not_saveable(g)
        if why is not None:
            raise MergeInputError(f"{g.name} cannot be saved as a package, so neither can the merged model: {why}")


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in ``t``: a finite sum says so without a mask of ``t``'s size (30 times faster on a conv
    weight); a sum that is not (a NaN or Inf, or finite values that overflow) is checked element by element."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(model: nn.Module, name: str) -> None:
    """``MergeInputError`` naming the model and the tensor when a parameter or buffer holds NaN or Inf."""
    for pname, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not all_finite(t):
            raise MergeInputError(f"{name}: {pname} holds NaN or Inf; fix or retrain the model first")


def first_batch(data: Iterable | None) -> torch.Tensor | dict[str, object]:
    """Two examples of the first calibration batch (its input tensor, or its keyword inputs without labels:
    ``ir.batches.example_of``), to trace on."""
    if data is None:
        raise MergeInputError("give example_inputs= or calibration data to trace the models")
    for batch in data:
        return example_of(batch)
    raise MergeInputError("the calibration data is empty")
