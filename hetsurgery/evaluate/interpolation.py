"""Linear interpolation between two models and the loss barrier (Frankle et al. 2020; Ainsworth et al. 2023).

``θ_λ = (1-λ) θ_a + λ θ_b`` for λ ∈ {0, 0.05, …, 1}; the barrier is ``max_λ L(θ_λ) - ½(L(θ_0) + L(θ_1))``.
``loss_barrier`` is the barrier at one point, for any merged model: ``L(θ_merged) − mean_k L(θ_k)``, the
loss of the model a merge gives minus the mean of the merged models' losses (Frankle et al. at λ = 0.5;
Xu et al.'s Table IV). The models may differ in architecture (depth, width): only their losses are compared.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hetsurgery.evaluate.metrics import predictions
from hetsurgery.export.atomic import atomic_file
from hetsurgery.ir.batches import input_names, model_input

LAMBDAS = tuple(i / 20 for i in range(21))


@dataclass(frozen=True)
class Curve:
    lambdas: tuple[float, ...]
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]

    @property
    def barrier(self) -> float:
        return max(self.loss) - 0.5 * (self.loss[0] + self.loss[-1])


def mean_loss(model: nn.Module, data: Iterable) -> float:
    """Mean cross-entropy of ``model``'s logits over ``data`` (``(inputs, labels)`` batches; ``logits_of``)."""
    logits, labels = predictions(model, data)
    return F.cross_entropy(logits, labels).item()


def loss_barrier(merged: nn.Module, models: Sequence[nn.Module], data: Iterable) -> float:
    """``L(merged) − mean_k L(models[k])`` on ``data``: the loss barrier of a merge at its (weighted) midpoint.

    >>> import torch, hetsurgery as hs
    >>> a = hs.zoo.mlp([8])
    >>> data = [(torch.randn(16, 64), torch.randint(0, 10, (16,)))]
    >>> loss_barrier(a, [a, a], data)
    0.0
    """
    return mean_loss(merged, data) - sum(mean_loss(m, data) for m in models) / len(models)


def lerp(a: nn.Module, b: nn.Module, lam: float) -> nn.Module:
    """A copy of ``a`` whose floating parameters and buffers are ``(1-lam) a + lam b``."""
    out = copy.deepcopy(a)
    sb = b.state_dict()
    with torch.no_grad():
        for name, t in out.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.lerp(t, sb[name].to(t.dtype), lam))
    return out


def interpolate(a: nn.Module, b: nn.Module, data: Iterable, *, lambdas: Sequence[float] = LAMBDAS,
                reset_bn: Iterable | None = None) -> Curve:
    """Loss and accuracy along the line from ``a`` to ``b`` (same architecture, same channel order).

    With ``reset_bn`` data, BatchNorm statistics are recomputed at every point (merged variances lie).
    """
    losses, accs = [], []
    for lam in lambdas:
        m = lerp(a, b, lam)
        if reset_bn is not None:
            _reset_bn(m, reset_bn)
        logits, labels = predictions(m, data)
        losses.append(F.cross_entropy(logits, labels).item())
        accs.append((logits.argmax(1) == labels).float().mean().item())
    return Curve(tuple(lambdas), tuple(losses), tuple(accs))


def _reset_bn(model: nn.Module, data: Iterable) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for batch in data:
            model(*model_input(batch, input_names(model)))
    model.eval()


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str = "interpolation") -> Path:
    """Loss and accuracy against λ for each named curve, one PNG (or SVG by suffix)."""
    from matplotlib.figure import Figure  # a Figure of its own: the caller's backend stays

    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, c in curves.items():
        ax_loss.plot(c.lambdas, c.loss, marker=".", label=f"{name} (barrier {c.barrier:.3f})")
        ax_acc.plot(c.lambdas, c.accuracy, marker=".", label=name)
    ax_loss.set(xlabel="λ", ylabel="test loss", title=title)
    ax_acc.set(xlabel="λ", ylabel="test accuracy")
    ax_loss.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` (a ``matplotlib.figure.Figure``, format by suffix) under a temporary name and rename it into
    place."""
    out = Path(path)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".").lower() or None, dpi=120)
    return out
