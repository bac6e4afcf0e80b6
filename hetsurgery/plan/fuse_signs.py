"""The diagonal ``D`` that ``FuseReluSegment`` puts in place of a ReLU, estimated from calibration data.

CLAFusion (Nguyen et al. 2023, §3.2) estimates each neuron's entry from its pre-activations ``z`` over the
``t`` calibration samples (every position of a feature map counts as a sample), with
``step(x) = 1 if x ≥ 0 else 0``:

* ``SIGN_OF_SUM``: ``step(Σ z)``;
* ``MAJORITY``: 1 when at least ``t/2`` samples have a positive pre-activation, else 0;
* ``AVERAGE_SIGN``: ``(1/t) Σ step(z)`` (a fraction, not a 0/1 value).

The statistics stream: a running sum and two counts per neuron, nothing stored per sample.

>>> import torch
>>> z = torch.tensor([[1.0, -3.0], [-0.5, 1.0], [2.0, 1.0]])   # 3 samples, 2 neurons
>>> [signs_from(SignCounts.of(z), e).tolist() for e in Estimator]
[[1.0, 0.0], [1.0, 1.0], [0.6666666666666666, 0.6666666666666666]]
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from hetsurgery.errors import HetsurgeryError
from hetsurgery.ir import ModelGraph, OpKind, Site
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.plan.joint import site_view, tap_module


class Estimator(enum.Enum):
    SIGN_OF_SUM = "sign_of_sum"
    MAJORITY = "majority"
    AVERAGE_SIGN = "average_sign"


@dataclass(frozen=True)
class SignCounts:
    """Per neuron: the sum of pre-activations, how many were positive, how many non-negative, of ``n``."""

    total: torch.Tensor
    positive: torch.Tensor
    nonneg: torch.Tensor
    n: int

    @staticmethod
    def of(z: torch.Tensor) -> SignCounts:
        """From a ``(samples, neurons)`` matrix."""
        z = z.double()
        return SignCounts(z.sum(0), (z > 0).sum(0).double(), (z >= 0).sum(0).double(), z.shape[0])

    def __add__(self, other: SignCounts) -> SignCounts:
        return SignCounts(self.total + other.total, self.positive + other.positive, self.nonneg + other.nonneg,
                          self.n + other.n)


def signs_from(c: SignCounts, estimator: Estimator) -> torch.Tensor:
    if estimator is Estimator.SIGN_OF_SUM:
        return (c.total >= 0).double()
    if estimator is Estimator.MAJORITY:
        return (c.positive >= c.n / 2).double()
    return c.nonneg / c.n


def estimate_signs(g: ModelGraph, units: Sequence[str], data: Iterable, estimator: Estimator
                   ) -> tuple[torch.Tensor, ...]:
    """One ``d`` per unit of ``units`` but the last: estimated from its pre-activation (``Unit.pre``) on ``data``
    (batches, or ``(inputs, labels)`` pairs), streaming."""
    pres = [g.unit(k).pre for k in units[:-1]]
    tap = tap_module(g, pres)
    sums: list[SignCounts | None] = [None] * len(pres)
    with torch.no_grad():
        for batch in data:
            x = model_input(batch, input_names(tap))
            outs = tap(*x)
            for i, (name, out) in enumerate(zip(pres, outs, strict=True)):
                dim = g.facts[name].channel_dim
                assert dim is not None
                feats = site_view(out, Site(name, dim), out.shape[dim]).transpose(1, 2).reshape(-1, out.shape[dim])
                counts = SignCounts.of(feats)
                prev = sums[i]
                sums[i] = counts if prev is None else prev + counts
    if any(s is None for s in sums):
        raise HetsurgeryError(f"{g.name}: no calibration batches to estimate the ReLU signs from")
    return tuple(signs_from(s, estimator) for s in sums if s is not None)


def norm_scales(g: ModelGraph, units: Sequence[str], data: Iterable) -> tuple[float | None, ...]:
    """Per unit of ``units`` but the last: the scale ``s`` that makes its LayerNorm (or RMSNorm) over the channels
    affine, ``LN(z) ≈ γ ⊙ C z / s + β``, the harmonic mean over ``data`` of each sample's ``σ(z)`` (so that
    ``z / s`` is ``z / σ(z)`` on average); ``None`` for a unit without one. ``()`` when no unit has one."""
    norms = [next((n for n in g.unit(k).nodes if g.facts[n].kind is OpKind.LAYER_NORM), None) for k in units[:-1]]
    if not any(norms):
        return ()
    nodes = {n.name: n for n in g.module.graph.nodes}
    inputs = [nodes[n].args[0].name if n is not None else None for n in norms]  # type: ignore[union-attr]
    tap = tap_module(g, [n for n in inputs if n is not None])
    inv = [0.0] * len(norms)
    seen = [0] * len(norms)
    with torch.no_grad():
        for batch in data:
            outs = iter(tap(*model_input(batch, input_names(tap))))
            for i, n in enumerate(norms):
                if n is None:
                    continue
                z = next(outs).double()
                mod = g.module.get_submodule(str(nodes[n].target))
                eps = getattr(mod, "eps", None) or torch.finfo(torch.float32).eps
                spread = z.var(-1, unbiased=False) if isinstance(mod, torch.nn.LayerNorm) else z.square().mean(-1)
                sigma = (spread + eps).sqrt()
                inv[i] += float((1.0 / sigma).sum())
                seen[i] += sigma.numel()
    if any(n is not None and not k for n, k in zip(norms, seen, strict=True)):
        raise HetsurgeryError(f"{g.name}: no calibration batches to estimate the LayerNorm scales from")
    return tuple(None if n is None else seen[i] / inv[i] for i, n in enumerate(norms))
