"""How far a base can lean towards a donor: the largest ``λ`` that keeps the base's own task.

MAL holds that a base absorbs a donor's units without losing its task while ``λ`` stays below a threshold
(linear mode connectivity between the base and the aligned donor); past it the task breaks down.
``find_lambda_threshold`` aligns the donor once, walks the grid ``λ ∈ {0, 0.05, …, 1}`` upwards, and bisects
between the last grid point within ``tolerance`` of the base (``λ = 0``, the base itself) and the first one
outside. Accuracy is a step function of ``λ`` and need not fall monotonically, so further points evenly spread
below the threshold are evaluated too (``verify`` of them at least, and no more than ``resolution`` apart);
where one falls outside, the threshold drops below it and is bisected again (up to three rounds). The threshold is the largest ``λ`` such that every ``λ`` evaluated up to
it is within tolerance: a statement about the points evaluated (``probes``), not a proof between them. It also
gives the curve (loss and accuracy at every grid point), the loss barrier
``max_λ L(λ) − ½ (L(0) + L(1))``, and one picture of both.

>>> import torch, hetsurgery as hs
>>> x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
>>> t = find_lambda_threshold(hs.zoo.mlp([8]), hs.zoo.mlp([8]), [(x, y)], layers="all", metric="loss",
...                           tolerance=10.0, lambdas=(0.0, 0.5, 1.0))
>>> t.threshold, len(t.curve.lambdas)
(1.0, 3)
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hetsurgery.assembly.assembler import select_units
from hetsurgery.assembly.donor import AlignedDonor, prepare_donor, reset_batchnorm_after
from hetsurgery.assembly.options import Layers
from hetsurgery.assembly.record import UnitRecord
from hetsurgery.errors import MergeInputError
from hetsurgery.evaluate import LAMBDAS, Curve, predictions
from hetsurgery.evaluate.interpolation import save_figure
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import example_of
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging.depth_options import DepthOptions
from hetsurgery.merging.inputs import BN_RESET_SAMPLES, check_reset_bn, default_device
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.options import check_options
from hetsurgery.tracing import trace

SLACK = 1e-9  # float rounding of accuracies and losses never decides a comparison
VERIFY = 20  # further λ evenly spread below a threshold found, evaluated before it is trusted
RESOLUTION = 0.005  # ... and no more than this far apart (narrow dips of accuracy between them stay possible)
VERIFY_ROUNDS = 3


class Metric(enum.Enum):
    """What must stay within tolerance: accuracy may drop by at most it, loss may rise by at most it."""

    ACCURACY = "accuracy"
    LOSS = "loss"


@dataclass(frozen=True)
class LambdaThreshold:
    """The largest ``λ`` found whose ``metric`` stays within ``tolerance`` of the base's (``base_value``: at
    ``λ = 0``, with the BatchNorm statistics recomputed as at every other ``λ`` when ``reset_bn`` asks), the
    curve along the grid, every ``(λ, metric)`` evaluated (grid and bisection, by ``λ``), the unit records of
    the selection, and the picture (``None`` unless asked for)."""

    threshold: float
    metric: Metric
    tolerance: float
    base_value: float
    curve: Curve
    probes: tuple[tuple[float, float], ...]
    units: tuple[UnitRecord, ...] = field(repr=False)
    plot: Path | None = None

    @property
    def barrier(self) -> float:
        """The loss barrier along the grid: ``max_λ L(λ) − ½ (L(0) + L(1))``."""
        return self.curve.barrier

    def within(self, value: float) -> bool:
        """Whether ``value`` of the metric is within tolerance of the base's."""
        return _within(value, self.base_value, self.tolerance, self.metric)


def find_lambda_threshold(base: nn.Module, donor: nn.Module, data: Iterable, *, layers: Layers,
                          tolerance: float = 0.01, metric: str = "accuracy", calibration: Iterable | None = None,
                          align: str = "mal", depth: str | None = None, lambdas: Sequence[float] = LAMBDAS,
                          refine: int = 6, verify: int = VERIFY, resolution: float = RESOLUTION,
                          reset_bn: bool | int = True,
                          plot: str | os.PathLike[str] | None = None,
                          example_inputs: torch.Tensor | None = None, device: torch.device | str | None = None,
                          progress: bool = False, **align_options: object) -> LambdaThreshold:
    """The largest ``λ`` (on ``lambdas``, refined by ``refine`` bisection steps) for which the base's task, the
    labelled batches ``data``, stays within ``tolerance`` of the base model: accuracy (``metric="accuracy"``,
    ``0.01`` = one point) may drop, or loss (``"loss"``) rise, by at most that much at every grid point below.

    ``refine`` bisection steps follow the grid, and at least ``verify`` points below the threshold, at most
    ``resolution`` apart, check it (see above).
    ``layers`` selects the base's units that absorb the donor, all with the same ``λ``. The donor is aligned
    once, as ``assemble`` does (``align``, ``depth``, their options), on ``calibration`` (default: ``data``),
    which also gives the BatchNorm statistics at every ``λ`` (``reset_bn``). ``plot`` names a PNG (or SVG)
    of the curve with the threshold.
    """
    kind = _metric(metric)
    check_reset_bn(reset_bn)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise MergeInputError(f"tolerance must be a non-negative number, not {tolerance!r}")
    grid = sorted({0.0, *(float(x) for x in lambdas)})
    if grid[0] < 0 or grid[-1] > 1:
        raise MergeInputError(f"lambdas must lie in [0, 1], got {list(lambdas)}")
    for name, value in (("refine", refine), ("verify", verify)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MergeInputError(f"{name} must be a whole number of points, not {value!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not resolution > 0:
        raise MergeInputError(f"resolution must be a positive spacing of λ, not {resolution!r}")
    if align not in METHODS:
        raise MergeInputError(f"unknown alignment method {align!r}: use one of {', '.join(METHODS)}")
    check_options(align, align_options)
    depth_opts = DepthOptions.of(depth, "add", "cka", "sign_of_sum")
    calib = calibration if calibration is not None else data
    device = default_device(device)
    x = example_inputs if example_inputs is not None else _first_inputs(data)
    g = trace(base, x, name="base")
    units = select_units(g, layers, 0.0, "find_lambda_threshold")
    ready = prepare_donor(g, donor, calib, name="the donor", align=align, depth=depth_opts, options=align_options,
                          device=device, progress=progress)
    samples = None if not reset_bn else (BN_RESET_SAMPLES if reset_bn is True else int(reset_bn))
    result = threshold_along(ready, list(units), data, tolerance=float(tolerance), metric=kind, lambdas=grid,
                             refine=refine, verify=verify, resolution=float(resolution), calibration=calib,
                             bn_samples=samples, device=device)
    return result if plot is None else replace(result, plot=plot_threshold(result, plot))


def threshold_along(ready: AlignedDonor, units: Sequence[str], data: Iterable, *, tolerance: float = 0.01,
                    metric: Metric = Metric.ACCURACY, lambdas: Sequence[float] = LAMBDAS, refine: int = 6,
                    verify: int = VERIFY, resolution: float = RESOLUTION, calibration: Iterable | None = None,
                    bn_samples: int | None = BN_RESET_SAMPLES, device: torch.device | str | None = None
                    ) -> LambdaThreshold:
    """``find_lambda_threshold`` for a donor already aligned (``prepare_donor``): the search alone, so that one
    alignment serves several selections of ``units`` (checked by the caller)."""
    grid = sorted({0.0, *lambdas})
    evaluated = {lam: score_at(ready, units, lam, data, calibration, bn_samples, device) for lam in grid}
    base_value = _value(evaluated[0.0], metric)

    def edge() -> tuple[float, float | None]:
        """The largest λ with every λ evaluated up to it within tolerance, and the first λ that is not."""
        safe = 0.0
        for lam in sorted(evaluated):
            if not _within(_value(evaluated[lam], metric), base_value, tolerance, metric):
                return safe, lam
            safe = lam
        return safe, None

    def bisect() -> float:
        lo, hi = edge()
        for _ in range(refine):
            if hi is None:
                break
            mid = (lo + hi) / 2
            evaluated[mid] = score_at(ready, units, mid, data, calibration, bn_samples, device)
            lo, hi = edge()
        return lo

    lo = bisect()
    for _ in range(VERIFY_ROUNDS):  # accuracy is a step function of λ: look between the points seen so far too
        n = max(verify, math.ceil(lo / resolution) - 1)
        for lam in (lo * (i + 1) / (n + 1) for i in range(n)):
            evaluated.setdefault(lam, score_at(ready, units, lam, data, calibration, bn_samples, device))
        if edge()[0] == lo:
            break
        lo = bisect()
    curve = Curve(tuple(grid), tuple(evaluated[lam][0] for lam in grid), tuple(evaluated[lam][1] for lam in grid))
    probes = tuple((lam, _value(evaluated[lam], metric)) for lam in sorted(evaluated))
    records = tuple(ready.unit_record(u, lo) for u in units)
    return LambdaThreshold(lo, metric, tolerance, base_value, curve, probes, records)


def score_at(ready: AlignedDonor, units: Iterable[str], lam: float, data: Iterable,
             calibration: Iterable | None = None, bn_samples: int | None = None,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """(loss, accuracy) on ``data`` of the base with ``units`` blended by ``lam`` (see ``blended_model``)."""
    logits, labels = predictions(blended_model(ready, units, lam, calibration, bn_samples, device), data)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def blended_model(ready: AlignedDonor, units: Iterable[str], lam: float, calibration: Iterable | None = None,
                  bn_samples: int | None = None, device: torch.device | str | None = None) -> nn.Module:
    """The base with ``units`` blended by ``lam``, BatchNorm statistics inside and after them recomputed on the
    first ``bn_samples`` of ``calibration`` when both are given: at ``λ = 0`` too, so that the curve measures ``λ``
    alone and does not jump between 0 and the first ``λ`` by the reset itself. Without a reset it is the base's
    own module run on the blended tensors (``torch.func.functional_call``): nothing is built per ``λ``."""
    chosen = {u: lam for u in units}
    blended = [u for u in chosen if ready.counterparts[u].exists]
    if bn_samples is not None and calibration is not None and blended and _has_batchnorm(ready.base):
        g = reset_batchnorm_after(ready.blend(chosen), blended, calibration, bn_samples, device)
        return to_module(g, share=True).eval()
    return _Bound(ready.module, {**ready.base.params, **ready.blended(chosen)})


class _Bound(nn.Module):
    """``module`` run on ``params`` (``torch.func.functional_call``), in eval mode."""

    def __init__(self, module: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.params = module.eval(), dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.inner, self.params, (x,))


def _has_batchnorm(g: ModelGraph) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.module.modules())


def _within(value: float, base: float, tolerance: float, kind: Metric) -> bool:
    if kind is Metric.ACCURACY:
        return value >= base - tolerance - SLACK
    return value <= base + tolerance + SLACK


def _metric(metric: object) -> Metric:
    try:
        return Metric(metric)
    except ValueError:
        raise MergeInputError(f"metric must be one of {', '.join(m.value for m in Metric)}, not {metric!r}") from None


def _value(point: tuple[float, float], kind: Metric) -> float:
    return point[1] if kind is Metric.ACCURACY else point[0]


def _first_inputs(data: Iterable) -> torch.Tensor | dict[str, object]:
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise MergeInputError("find_lambda_threshold scores the base's task: data must yield (inputs, labels)")
        return example_of(batch)
    raise MergeInputError("the data is empty")


def plot_threshold(t: LambdaThreshold, path: str | os.PathLike[str], title: str = "") -> Path:
    """The metric and the loss along ``λ``, the tolerance band and the threshold: one PNG (or SVG by suffix)."""
    from matplotlib.figure import Figure  # a Figure of its own: the caller's backend stays

    fig = Figure(figsize=(9, 3.5))
    ax_m, ax_loss = fig.subplots(1, 2)
    lams, values = zip(*t.probes, strict=True)
    ax_m.plot(lams, values, marker=".", label=t.metric.value)
    sign = -1 if t.metric is Metric.ACCURACY else 1
    ax_m.axhline(t.base_value + sign * t.tolerance, color="grey", linestyle="--",
                 label=f"base {t.base_value:.3f} {'−' if sign < 0 else '+'} {t.tolerance:g}")
    ax_m.axvline(t.threshold, color="red", linestyle=":", label=f"threshold λ = {t.threshold:.3f}")
    ax_m.set(xlabel="λ", ylabel=f"base task {t.metric.value}", title=title or "base task along λ")
    ax_m.legend(fontsize=8)
    ax_loss.plot(t.curve.lambdas, t.curve.loss, marker=".", label=f"loss (barrier {t.barrier:.3f})")
    ax_loss.axvline(t.threshold, color="red", linestyle=":")
    ax_loss.set(xlabel="λ", ylabel="base task loss")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
