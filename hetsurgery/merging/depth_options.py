"""The depth options of ``merge`` and ``assemble`` as one frozen value, checked once (``DepthOptions.of``).

>>> DepthOptions.of("cla", "merge", "width", "majority").cost
<DepthCost.WIDTH: 'width'>
>>> DepthOptions.of(None, "add", "cka", "sign_of_sum") is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar

from hetsurgery.errors import MergeInputError
from hetsurgery.plan.depth import Balance, DepthMethod
from hetsurgery.plan.fuse_signs import Estimator

DEPTH_SAMPLES = 512
E = TypeVar("E", bound=Enum)


class DepthCost(StrEnum):
    """What CLA's cost compares: ``1 − CKA`` of the units' pre-activations, or their widths (no data)."""

    CKA = "cka"
    WIDTH = "width"


@dataclass(frozen=True)
class DepthOptions:
    method: DepthMethod
    balance: Balance
    cost: DepthCost = DepthCost.CKA  # CLA only: WIDTH compares widths, without data
    estimator: Estimator = Estimator.SIGN_OF_SUM  # balance="merge": how each fused ReLU's D is estimated
    samples: int | None = DEPTH_SAMPLES  # calibration samples the unit similarities use (None: all)
    anchor: int | None = None  # the model the others are balanced to (None: the deepest, then the widest)

    @staticmethod
    def of(depth: str | DepthMethod | None, balance: str | Balance, cost: str | DepthCost, estimator: str | Estimator,
           samples: int | None = DEPTH_SAMPLES, anchor: int | None = None) -> DepthOptions | None:
        """The options as given to ``merge``, checked (``MergeInputError`` naming the bad value)."""
        if depth is None:
            given = [f"{k}={v!r}" for k, v, default in (("balance", balance, "add"), ("depth_cost", cost, "cka"),
                                                         ("estimator", estimator, "sign_of_sum")) if v != default]
            if given:
                raise MergeInputError(f"{', '.join(given)} only matter for models of different depth: give depth="
                                      "'cla', 'sma' or 'lma' too")
            return None
        method = _enum(DepthMethod, depth, "depth")
        bal = _enum(Balance, balance, "balance")
        kind = _enum(DepthCost, cost, "depth_cost")
        if kind is DepthCost.WIDTH and method is not DepthMethod.CLA:
            raise MergeInputError(f"depth_cost='width' is CLAFusion's data-free cost: use it with depth='cla', "
                                  f"not {method.value!r}")
        if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 2):
            raise MergeInputError(f"depth_samples must be a whole number of at least 2, or None, not {samples!r}")
        if anchor is not None and (not isinstance(anchor, int) or isinstance(anchor, bool) or anchor < 0):
            raise MergeInputError(f"depth_anchor must be a model index (0, 1, ...) or None, not {anchor!r}")
        return DepthOptions(method, bal, kind, _enum(Estimator, estimator, "estimator"), samples, anchor)


def _enum(kind: type[E], value: object, what: str) -> E:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise MergeInputError(f"{what} must be one of {', '.join(str(m.value) for m in kind)}, not {value!r}") from None
