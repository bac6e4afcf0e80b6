"""What a calibration batch gives the model: its inputs, in the order of the traced graph's placeholders.

A batch is a tensor; an ``(inputs, labels)`` pair; a tuple of input tensors (labels, when present, after
them); or a dict of keyword inputs (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``), read by
the names of the graph's inputs: keys the graph takes no input for (``labels``) are left out, and a missing
one is refused with its name. Every pass over calibration data (statistics, unit similarities, BatchNorm
reset, sign estimates) reads batches through ``model_input`` and runs ``model(*inputs)``, so one rule holds
everywhere and anything else is refused with the reason before a model runs on it.

>>> import torch
>>> x = model_input((torch.zeros(2, 3), torch.tensor([0, 1])))
>>> [t.shape for t in x], x.samples
([torch.Size([2, 3])], 2)
>>> batch = {"input_ids": torch.zeros(4, 5, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long),
...          "attention_mask": torch.ones(4, 5, dtype=torch.long)}
>>> [tuple(t.shape) for t in model_input(batch, ("input_ids", "attention_mask"))[:2]]
[(2, 5), (2, 5)]
>>> model_input(batch, ("input_ids", "token_type_ids"))
Traceback (most recent call last):
...
hetsurgery.errors.InvalidInput: a calibration batch (keys: input_ids, labels, attention_mask) lacks token_type_ids, an input of the traced model (it takes input_ids, token_type_ids)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass

import torch
from torch import fx, nn

from hetsurgery.errors import InvalidInput

_LABELS = ("labels", "label")  # the keys Hugging Face datasets hold the targets under: never a model input


@dataclass(frozen=True)
class Inputs:
    """One batch's model inputs, in the graph's order: ``model(*inputs)`` runs the model on it."""

    tensors: tuple[torch.Tensor, ...]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.tensors)

    def __getitem__(self, index: slice) -> Inputs:
        """The samples ``index`` of every input (the batch dim first)."""
        return Inputs(tuple(t[index] for t in self.tensors))

    @property
    def samples(self) -> int:
        """The batch size."""
        return self.tensors[0].shape[0] if self.tensors and self.tensors[0].dim() else 1

    def to(self, device: torch.device | str | None) -> Inputs:
        return self if device is None else Inputs(tuple(t.to(device) for t in self.tensors))


def model_input(batch: object, names: Sequence[str] = ()) -> Inputs:
    """The inputs ``batch`` gives a model whose inputs are ``names`` (``InvalidInput`` for what cannot be)."""
    if isinstance(batch, torch.Tensor):
        if len(names) > 1:
            raise InvalidInput(f"a calibration batch is one tensor; the traced model takes {len(names)} inputs "
                               f"({', '.join(names)}): give tuples or dicts of them")
        return Inputs((batch,))
    if isinstance(batch, Mapping):
        return Inputs(_by_name(batch, names))
    if isinstance(batch, (tuple, list)) and batch:
        if isinstance(batch[0], (Mapping, tuple, list)):  # (inputs, labels) with several inputs
            return model_input(batch[0], names)
        items = tuple(batch[:max(len(names), 1)])
        bad = [type(x).__name__ for x in items if not isinstance(x, torch.Tensor)]
        if bad:
            raise InvalidInput(f"a calibration batch holds a {bad[0]} where the model takes a tensor; give tensors, "
                               "(inputs, labels) pairs or dicts of keyword inputs")
        if len(items) < len(names):
            raise InvalidInput(f"a calibration batch holds {len(items)} tensors; the traced model takes "
                               f"{len(names)} inputs ({', '.join(names)})")
        return Inputs(items)
    raise InvalidInput(f"a calibration batch is a {type(batch).__name__}; give tensors, (inputs, labels) pairs or "
                       "dicts of keyword inputs")


def _by_name(batch: Mapping[object, object], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    keys = ", ".join(map(str, list(batch)[:8]))
    if not names:
        raise InvalidInput(f"a calibration batch is a dict (keys: {keys}) but the model's input names are unknown; "
                           "trace it with keyword example inputs, or map each batch to its input tensor first "
                           "(the merge config's input_key: does that)")
    missing = [n for n in names if n not in batch]
    if missing:
        raise InvalidInput(f"a calibration batch (keys: {keys}) lacks {', '.join(missing)}, an input of the traced "
                           f"model (it takes {', '.join(names)})")
    values = tuple(batch[n] for n in names)
    bad = [n for n, v in zip(names, values, strict=True) if not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidInput(f"a calibration batch's {bad[0]} is a {type(batch[bad[0]]).__name__}, not a tensor")
    return values  # type: ignore[return-value]


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The names a model's inputs are read by: a traced graph's placeholders, else the forward's parameters."""
    if isinstance(model, fx.GraphModule):
        return tuple(str(n.target) for n in model.graph.nodes if n.op == "placeholder")
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def example_of(batch: object, samples: int = 2) -> torch.Tensor | dict[str, object]:
    """What ``trace`` takes from a batch to trace a model: the first ``samples`` samples of its input tensor, or
    of its dict of keyword inputs without the labels (a model given labels computes its loss)."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(inputs, Mapping):
        return {str(k): v[:samples] if isinstance(v, torch.Tensor) and v.dim() else v
                for k, v in inputs.items() if k not in _LABELS}
    if isinstance(inputs, torch.Tensor):
        return inputs[:samples]
    raise InvalidInput(f"a calibration batch is a {type(batch).__name__}; give tensors, (inputs, labels) pairs or "
                       "dicts of keyword inputs")


def with_progress(data: Iterable, desc: str, progress: bool) -> Iterator[object]:
    """The batches of ``data``, iterated once, with a progress bar. (``tqdm.auto``'s class calls ``iter`` on what
    it wraps when it is made and then iterates it again: a DataLoader would start its workers twice.)"""
    from tqdm.auto import tqdm

    total = len(data) if isinstance(data, Sized) else None
    with tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=False) as bar:
        for batch in data:
            yield batch
            bar.update()


class Resumable:
    """Calibration batches read by several loops that together make one pass: a loop that stops inside a batch
    hands the rest back (``hand_back``), and the next loop starts with it, then goes on where the first stopped.

    >>> data = Resumable([1, 2, 3])
    >>> for b in data:
    ...     if b == 2:
    ...         data.hand_back("rest of 2")
    ...         break
    >>> list(data)
    ['rest of 2', 3]
    """

    def __init__(self, data: Iterable) -> None:
        self.data = data
        self._it: Iterator | None = None
        self._back: list[object] = []

    def __iter__(self) -> Iterator[object]:
        if self._it is None:
            self._it = iter(self.data)
        while self._back:
            yield self._back.pop()
        for batch in self._it:  # noqa: UP028 (``yield from`` would close the batches' iterator when a loop stops early)
            yield batch

    def hand_back(self, batch: object) -> None:
        self._back.append(batch)


def one_shot(data: object) -> bool:
    """Whether ``data`` can be iterated only once (a generator, an iterator). Asked without calling ``iter``,
    which would start a DataLoader's workers for nothing."""
    return isinstance(data, Iterator)
