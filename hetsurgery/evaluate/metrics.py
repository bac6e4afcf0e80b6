"""Accuracy, joint and per-task accuracy on disjoint class splits, and the output ensemble baseline.

Per-task accuracy restricts the argmax to the task's classes (on the task's examples only); joint
accuracy takes the argmax over all classes on every example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def logits_of(model: nn.Module, inputs: object) -> torch.Tensor:
    """``model``'s logits on one batch's inputs: a tensor, or a dict of keyword inputs (a Hugging Face model's
    ``input_ids``, ``attention_mask``); an output that is a dict or has ``logits`` (``ModelOutput``) gives those.

    >>> import torch, hetsurgery as hs
    >>> logits_of(hs.zoo.mlp([8]), torch.randn(2, 64)).shape
    torch.Size([2, 10])
    """
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, Mapping):
        return out["logits"]
    return out.logits if hasattr(out, "logits") else out


def predictions(model: nn.Module, data: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over ``data`` (``(inputs, labels)`` batches, inputs as ``logits_of`` takes them), in eval
    mode without grad (the train/eval flag of every layer is restored afterwards, mixed ones too)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    logits, labels = [], []
    try:
        with torch.no_grad():
            for x, y in data:
                logits.append(logits_of(model, x))
                labels.append(y)
    finally:
        for m, flag in flags.items():
            m.training = flag
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, data: Iterable) -> float:
    logits, labels = predictions(model, data)
    return (logits.argmax(1) == labels).float().mean().item()


@dataclass(frozen=True)
class TaskScores:
    joint: float
    per_task: tuple[float, ...]

    @property
    def task_avg(self) -> float:
        return sum(self.per_task) / len(self.per_task)

    def row(self) -> list[float]:
        return [self.joint, *self.per_task, self.task_avg]


def task_scores(model: nn.Module, data: Iterable, tasks: Sequence[Sequence[int]]) -> TaskScores:
    """Joint accuracy and, for each task, accuracy with the argmax restricted to that task's classes."""
    logits, labels = predictions(model, data)
    joint = (logits.argmax(1) == labels).float().mean().item()
    per_task = []
    for classes in tasks:
        cls = torch.tensor(list(classes))
        mask = torch.isin(labels, cls)
        pred = cls[logits[mask][:, cls].argmax(1)]
        per_task.append((pred == labels[mask]).float().mean().item())
    return TaskScores(joint, tuple(per_task))


class Ensemble(nn.Module):
    """The output ensemble: the mean of the models' logits (the baseline a merge should approach)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
