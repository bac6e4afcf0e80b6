"""The calibration and evaluation batches of a config, read once into a list and checked before any merge.

A batch is a tensor of inputs, an ``(inputs, labels)`` pair, or — from a loader that yields dicts (as
Hugging Face datasets and many training loops do) — a dict whose ``input_key`` and ``label_key`` name
the parts; dicts become ``inputs`` or ``(inputs, labels)``. The evaluation needs labels, so its batches
are checked for them here: a mistake there would otherwise surface after the merge had run.

>>> import torch
>>> batch_parts({"image": torch.zeros(2, 4), "label": torch.tensor([0, 1])}, "image", "label", "calibration", 0)
(tensor([[0., 0., 0., 0.],
        [0., 0., 0., 0.]]), tensor([0, 1]))
>>> batch_parts({"image": torch.zeros(2, 4)}, None, None, "calibration", 0)
Traceback (most recent call last):
...
hetsurgery.export.errors.InputError: calibration: batch 0 is a dict with keys image; name the inputs with input_key: (and the labels with label_key:)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from hetsurgery.config.build import call_user, device_of, user_function
from hetsurgery.config.schema import DataSpec, EvaluationSpec, MergeConfig
from hetsurgery.export.errors import InputError
from hetsurgery.zoo.data import digits, loader

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def build_data(spec: DataSpec, cfg: MergeConfig, base: Path, section: str) -> list[Batch]:
    """The batches of ``spec`` (a list: merging reads them more than once) on ``cfg.device``, checked.

    ``section`` is ``calibration`` or ``evaluate``: the training or test split of the digits, and for
    ``evaluate`` every batch must carry integer labels.
    """
    labelled = isinstance(spec, EvaluationSpec)
    raw = itertools.islice(_source(spec, base, section), spec.max_batches)
    out: list[Batch] = []
    device = device_of(cfg)
    for k, batch in _read(raw, spec, section):
        parts = batch_parts(batch, spec.input_key, spec.label_key, section, k)
        inputs = parts[0] if isinstance(parts, tuple) else parts
        if tuple(inputs.shape[1:]) != tuple(cfg.input_shape):
            raise InputError(f"{section}: the examples of batch {k} have shape {tuple(inputs.shape[1:])}, but "
                             f"input_shape is {list(cfg.input_shape)}")
        if labelled:
            _check_labels(parts, section, k)
        out.append((parts[0].to(device), parts[1].to(device)) if isinstance(parts, tuple) else parts.to(device))
    if not out:
        raise InputError(f"{section}: the data gave no batches")
    return out


def batch_parts(batch: object, input_key: str | None, label_key: str | None, section: str, k: int) -> Batch:
    """``inputs`` or ``(inputs, labels)`` of one batch; ``InputError`` naming the batch when it has another form."""
    if isinstance(batch, Mapping):
        keys = ", ".join(map(str, batch))
        if input_key is None:
            raise InputError(f"{section}: batch {k} is a dict with keys {keys}; name the inputs with input_key: "
                             "(and the labels with label_key:)")
        missing = [key for key in (input_key, label_key) if key is not None and key not in batch]
        if missing:
            raise InputError(f"{section}: batch {k} has no key {missing[0]!r}; its keys are {keys}")
        batch = (batch[input_key], batch[label_key]) if label_key is not None else batch[input_key]
    elif input_key is not None or label_key is not None:
        raise InputError(f"{section}: input_key and label_key name the parts of dict batches, but batch {k} is a "
                         f"{type(batch).__name__}; remove them")
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(p, torch.Tensor) for p in batch[:2]):
        return (batch[0], batch[1]) if len(batch) > 1 else batch[0]
    if isinstance(batch, torch.Tensor):
        return batch
    raise InputError(f"{section}: batch {k} is a {type(batch).__name__}; give tensors, (inputs, labels) pairs of "
                     "tensors, or dicts with input_key and label_key")


def _source(spec: DataSpec, base: Path, section: str) -> Iterable[Any]:
    if spec.loader is not None:
        made = call_user(user_function(spec.loader, base, f"{section}.loader"), spec.kwargs,
                         f"{section}.loader {spec.loader}(**{spec.kwargs})")
        if not isinstance(made, Iterable) or isinstance(made, (torch.Tensor, str, bytes, Mapping)):
            raise InputError(f"{section}.loader {spec.loader!r} returned a {type(made).__name__}, not an iterable "
                             "of batches (a list of batches or a DataLoader)")
        return made
    full = digits("train" if section == "calibration" else "test")
    dataset: Dataset = Subset(full, range(0, len(full), spec.every)) if spec.every > 1 else full
    return loader(dataset, spec.batch_size)


def _read(batches: Iterable[Any], spec: DataSpec, section: str) -> Iterable[tuple[int, Any]]:
    """``enumerate(batches)``, with an error in the user's loader reported as bad input naming it."""
    iterator = iter(batches)
    for k in itertools.count():
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # the user's loader failed while producing a batch
            raise InputError(f"{section}.loader {spec.loader}: reading batch {k} failed: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}") from exc
        yield k, batch


def _check_labels(parts: Batch, section: str, k: int) -> None:
    if not isinstance(parts, tuple):
        raise InputError(f"{section}: batch {k} holds inputs but no labels; accuracy needs (inputs, labels) pairs "
                         "(or, for dict batches, label_key:)")
    inputs, labels = parts
    if labels.is_floating_point() or labels.is_complex() or labels.dim() != 1 or len(labels) != len(inputs):
        raise InputError(f"{section}: the labels of batch {k} must be whole class numbers, one per example "
                         f"({len(inputs)}), not a {labels.dtype} tensor of shape {tuple(labels.shape)}")
