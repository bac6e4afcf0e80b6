"""Checking a merge method's options before any work: names, types and ranges, in one place.

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
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from hetsurgery.errors import MergeInputError
from hetsurgery.merging.methods import METHODS
from hetsurgery.plan.solvers.ot import OTCost, OTSolver


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
