"""What a calibration batch gives the model: a tensor, or the first part of an ``(inputs, labels)`` pair.

Every pass over calibration data (statistics, unit similarities, BatchNorm reset, sign estimates) reads
batches through ``model_input``, so one rule holds everywhere and anything else is refused with the reason
before a model runs on it (a dict batch from a Hugging Face dataset would otherwise fail deep inside the
model).

>>> import torch
>>> model_input((torch.zeros(2, 3), torch.tensor([0, 1]))).shape
torch.Size([2, 3])
>>> model_input({"pixel_values": torch.zeros(2, 3)})
Traceback (most recent call last):
...
hetsurgery.errors.InvalidInput: a calibration batch is a dict (keys: pixel_values); hetsurgery feeds models tensors or (inputs, labels) pairs: map each batch to its input tensor first (the merge config's input_key: does that)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hetsurgery.errors import InvalidInput


def model_input(batch: object) -> torch.Tensor:
    """The tensor a model runs on for ``batch`` (``InvalidInput`` for anything that is not one)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Mapping):
        raise InvalidInput(f"a calibration batch is a dict (keys: {', '.join(map(str, list(x)[:6]))}); hetsurgery "
                           "feeds models tensors or (inputs, labels) pairs: map each batch to its input tensor first "
                           "(the merge config's input_key: does that)")
    raise InvalidInput(f"a calibration batch is a {type(x).__name__}; give tensors or (inputs, labels) pairs")
