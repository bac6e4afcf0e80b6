"""The options of a merge, checked before any work: ``MergeOptions``, one frozen value, and the width method's
own options (names, types and ranges), in one place.

A method's options are the keyword-only parameters of its plan function (``merge.methods``); each value
must have its default's type (an ``int`` passes for a ``float``, a ``bool`` never for a number) and,
where the type says too little, satisfy ``RULES`` (one meaning per option name, whatever the method).

>>> check_options("ot", {"solver": "nope"})
Traceback (most recent call last):
...
hetsurgery.errors.MergeInputError: method 'ot': option solver must be 'emd' or 'sinkhorn', not 'nope'
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.merging.depth_options import DepthOptions
from hetsurgery.merging.inputs import check_reset_bn
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.partial import PartialOptions
from hetsurgery.merging.widths import Width
from hetsurgery.plan.solvers.ot import OTCost, OTMarginals, OTSolver


def _one_of(kind: type[enum.Enum]) -> tuple[Callable[[Any], bool], str]:
    """The rule for an option spelled as the value of one of ``kind``'s members.

    >>> _one_of(OTSolver)[1]
    "'emd' or 'sinkhorn'"
    """
    values = [member.value for member in kind]
    *rest, last = map(repr, values)
    return (lambda v: v in values), f"{', '.join(rest)} or {last}" if rest else last


RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType({
    "solver": _one_of(OTSolver),  # ot: exact or entropic transport
    "cost": _one_of(OTCost),  # ot: what is compared
    "marginals": _one_of(OTMarginals),  # ot: partial or balanced transport
    "reg": (lambda v: v > 0, "positive"),  # ot: Sinkhorn's regularisation
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),  # zip: the discount of a feature zipped again
    "beta": (lambda v: v >= 0, "non-negative"),  # zip: the share of within-model merges
    "max_sweeps": (lambda v: v >= 1, "at least 1"),  # weight, mal: coordinate-ascent sweeps
})


def method_options(method: str) -> dict[str, inspect.Parameter]:
    """The options ``method`` takes: name -> parameter (with its default)."""
    spec = METHODS.get(method)
    if spec is None:
        raise MergeInputError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    params = inspect.signature(spec.plan).parameters.values()
    return {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}


def check_options(method: str, options: Mapping[str, object]) -> None:
    """``MergeError`` naming the method and the option when ``options`` cannot be used as given."""
    known = method_options(method)
    for key, value in options.items():
        p = known.get(key)
        if p is None:
            raise MergeInputError(f"method {method!r} takes no option {key!r} (its options: {', '.join(known) or 'none'})")
        kind = type(p.default)
        if not _is(value, kind):
            raise MergeInputError(f"method {method!r}: option {key} takes a {kind.__name__} (default {p.default!r}), "
                             f"not {value!r}")
        rule = RULES.get(key)
        if rule is not None and not rule[0](value):
            raise MergeInputError(f"method {method!r}: option {key} must be {rule[1]}, not {value!r}")


def _is(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


@dataclass(frozen=True)
class MergeOptions:
    """Everything ``merge`` (``align``, ``plan_merge``) is asked besides the models and the data, as one frozen
    value checked once, by ``of`` (which takes ``merge``'s keywords): the width ``method`` and its checked
    ``method_options``, the ``DepthOptions`` (``None``: the models have one depth), the rest as ``merge`` documents
    them. What needs the models (how many weights, which anchor, which widths) is checked when they are traced.

    >>> MergeOptions.of(method="zip", alpha=0.25, depth="lma").method_options["alpha"]
    0.25
    >>> MergeOptions.of(method="zip", alpha=2)
    Traceback (most recent call last):
    ...
    hetsurgery.errors.MergeInputError: method 'zip': option alpha must be in [0, 1], not 2
    """

    method: str = "zip"
    method_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    weights: tuple[float, ...] | None = None
    reset_bn: bool | int = True
    anchor: int = 0
    width: Width = None
    depth: DepthOptions | None = None
    example_inputs: torch.Tensor | None = field(default=None, repr=False)
    memory_budget: int | None = None
    progress: bool = True
    device: torch.device | str | None = None
    names: tuple[str, ...] | None = None
    saveable: bool = False
    partial: PartialOptions | None = None  # stop_at= and heads=: merge a trunk, keep each model's tail
    repair: bool | int | None = None  # REPAIR the merged layers' statistics (True: on 512 samples, N: on N; None:
    # when the models normalise without running statistics, merging.repair.wanted)
    distributed: bool | None = None  # statistics over torch.distributed ranks (None: when torchrun started us)

    @staticmethod
    def of(*, method: str = "zip", weights: Sequence[float] | None = None, reset_bn: bool | int = True,
           anchor: int = 0, width: Width = None, depth: str | None = None, balance: str = "add",
           depth_cost: str = "cka", estimator: str = "sign_of_sum", depth_samples: int | None = 512,
           depth_anchor: int | None = None, example_inputs: torch.Tensor | None = None,
           memory_budget: int | None = None, progress: bool = True, device: torch.device | str | None = None,
           names: Sequence[str] | None = None, saveable: bool = False, stop_at: int | str | None = None,
           heads: str = "combined", repair: bool | int | None = None, distributed: bool | None = None,
           **method_options: object) -> MergeOptions:
        """The options as ``merge``'s keywords give them, checked (``MergeInputError`` naming the bad one)."""
        depth_opts = DepthOptions.of(depth, balance, depth_cost, estimator, depth_samples, depth_anchor)
        check_options(method, method_options)
        check_reset_bn(reset_bn)
        if repair is not None:
            check_reset_bn(repair, "repair")
        if isinstance(anchor, bool) or not isinstance(anchor, int) or anchor < 0:
            raise MergeInputError(f"anchor must be a model index (0, 1, ...), not {anchor!r}")
        if weights is not None and (isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence)):
            raise MergeInputError(f"weights must be a list of numbers, one per model, not {weights!r}")
        if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                          or memory_budget < 1):
            raise MergeInputError(f"memory_budget must be a positive number of bytes or None, not {memory_budget!r}")
        for key, value in (("progress", progress), ("saveable", saveable)):
            if not isinstance(value, bool):
                raise MergeInputError(f"{key} must be True or False, not {value!r}")
        if distributed is not None and not isinstance(distributed, bool):
            raise MergeInputError(f"distributed must be True, False or None, not {distributed!r}")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) and n for n in names)):
            raise MergeInputError(f"names must be non-empty strings, one per model, not {names!r}")
        return MergeOptions(method, MappingProxyType(dict(method_options)),
                            None if weights is None else tuple(weights), reset_bn, anchor, width, depth_opts,
                            example_inputs, memory_budget, progress, device,
                            None if names is None else tuple(names), saveable, PartialOptions.of(stop_at, heads),
                            repair, distributed)

    @staticmethod
    def given(options: MergeOptions | None, keywords: Mapping[str, Any]) -> MergeOptions:
        """``options`` as passed, or the value ``keywords`` make; never both."""
        return options_given(MergeOptions, options, keywords, MergeOptions.of)


Opts = TypeVar("Opts")


def options_given(kind: type[Opts], options: Opts | None, keywords: Mapping[str, Any], make: Callable[..., Opts]
                  ) -> Opts:
    """An options value as a call gives it: ``options`` (a ``kind``), or ``make(**keywords)``; never both."""
    if options is None:
        return make(**keywords)
    if not isinstance(options, kind):
        raise MergeInputError(f"options must be a {kind.__name__} ({kind.__name__}.of(...)), not a "
                              f"{type(options).__name__}")
    if keywords:
        raise MergeInputError(f"give the options either as options= or as keywords, not both "
                              f"({', '.join(sorted(keywords))} given beside options=)")
    return options
