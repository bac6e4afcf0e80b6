"""Fusing a ReLU segment with an estimated ``D``, and what it cost: CLAFusion's "merge layers", end to end.

``fuse_relu_segment`` estimates the signs (``plan.fuse_signs``), applies ``FuseReluSegment`` and measures the
fused model against the original on the same calibration data: the relative output error (largest absolute
difference over the largest absolute output) and, when the batches carry labels, the accuracy before and
after.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8], in_features=4, num_classes=3), torch.randn(2, 4))
>>> fused, report = fuse_relu_segment(g, ("layers_0", "layers_2"), [torch.randn(32, 4)], "majority")
>>> [u.key for u in fused.units], report.estimator.value
(['layers_2', 'layers_4'], 'majority')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.ir.lowering import to_module
from hetsurgery.passes import FuseReluSegment
from hetsurgery.passes.base import output_tensors
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs


@dataclass(frozen=True)
class FuseReport:
    """What fusing cost on the calibration data (``accuracy_*`` are ``None`` without labels)."""

    units: tuple[str, ...]
    estimator: Estimator
    relative_error: float
    accuracy_before: float | None
    accuracy_after: float | None
    samples: int

    @property
    def accuracy_change(self) -> float | None:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_after - self.accuracy_before

    def __str__(self) -> str:
        acc = "" if self.accuracy_change is None else (
            f", accuracy {self.accuracy_before:.3f} -> {self.accuracy_after:.3f} ({self.accuracy_change:+.3f})")
        return (f"fused {' + '.join(self.units)} ({self.estimator.value}): relative output error "
                f"{self.relative_error:.3g} on {self.samples} samples{acc}")


def fuse_relu_segment(g: ModelGraph, units: Sequence[str], data: Iterable, estimator: Estimator | str
                      ) -> tuple[ModelGraph, FuseReport]:
    """Fuse ``units`` of ``g`` with signs estimated on ``data``; the fused graph and its ``FuseReport``."""
    est = _estimator(estimator)
    signs = estimate_signs(g, units, data, est)
    fused = FuseReluSegment(tuple(units), signs)(g)
    return fused, compare(g, fused, data, units, est)


def compare(before: ModelGraph, after: ModelGraph, data: Iterable, units: Sequence[str], est: Estimator
            ) -> FuseReport:
    """Both graphs on the same batches: relative output error, and accuracy when batches have labels."""
    return FuseReport(tuple(units), est, *measure(before, after, data))


@dataclass(frozen=True)
class InsertReport:
    """What inserting approximate identity units (``InsertPostNormBlock``) into a model cost on the calibration data
    (``accuracy_*`` are ``None`` without labels)."""

    model: str
    units: tuple[str, ...]
    relative_error: float
    accuracy_before: float | None
    accuracy_after: float | None
    samples: int

    def __str__(self) -> str:
        acc = "" if self.accuracy_before is None or self.accuracy_after is None else (
            f", accuracy {self.accuracy_before:.3f} -> {self.accuracy_after:.3f} "
            f"({self.accuracy_after - self.accuracy_before:+.3f})")
        return (f"inserted post-norm blocks {', '.join(self.units)} into {self.model} (approximately the identity): "
                f"relative output error {self.relative_error:.3g} on {self.samples} samples{acc}")


def measure(before: ModelGraph, after: ModelGraph, data: Iterable) -> tuple[float, float | None, float | None, int]:
    """Both graphs on the same batches: the relative output error (largest absolute difference over the largest
    absolute output), the accuracies before and after when batches have labels, and the samples seen."""
    a, b = to_module(before, share=True).eval(), to_module(after, share=True).eval()
    diff = scale = 0.0
    right_a = right_b = labelled = seen = 0
    with torch.no_grad():
        for batch in data:
            x = model_input(batch, input_names(a))
            ya, yb = output_tensors(a(*x))[0], output_tensors(b(*x))[0]
            diff = max(diff, float((ya - yb).abs().max()))
            scale = max(scale, float(ya.abs().max()))
            seen += x.samples
            if isinstance(batch, (tuple, list)) and len(batch) > 1:
                y = batch[1]
                right_a += int((ya.argmax(-1) == y).sum())
                right_b += int((yb.argmax(-1) == y).sum())
                labelled += y.shape[0]
    acc_a = right_a / labelled if labelled else None
    acc_b = right_b / labelled if labelled else None
    return diff / max(scale, 1e-12), acc_a, acc_b, seen


def _estimator(e: Estimator | str) -> Estimator:
    if isinstance(e, Estimator):
        return e
    try:
        return Estimator(e)
    except ValueError:
        raise MergeInputError(f"unknown sign estimator {e!r}: use one of "
                              f"{', '.join(x.value for x in Estimator)}") from None
