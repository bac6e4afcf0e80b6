"""``Example``: the example inputs of ``trace`` as one call of the model's ``forward``.

``trace`` takes a tensor, a sequence of tensors (positional inputs) or a mapping of keyword inputs
(``{"input_ids": ids, "attention_mask": mask}``); values that are not tensors (``use_cache=False``) are
constants of the trace. The traced graph takes the tensors as its inputs (its placeholders are named after
the forward's parameters), so ``ModelGraph.example_inputs`` lists them in the graph's order.

>>> import torch
>>> class Net(torch.nn.Module):
...     def forward(self, input_ids, attention_mask=None, inputs_embeds=None, use_cache=None, **kwargs):
...         return input_ids
>>> ex = Example.of({"attention_mask": torch.ones(2, 3), "input_ids": torch.zeros(2, 3)}).defaults_for(Net())
>>> ex.kwargs["use_cache"], ex.notes
(False, ('use_cache=False (the forward takes use_cache; its cache is not part of a traceable output)',))
>>> sorted(ex.fixed_for_fx(Net()).items())
[('inputs_embeds', None), ('use_cache', False)]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from hetsurgery.errors import TracingError

_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class Example:
    """Positional ``args`` and keyword ``kwargs`` of one call of the model; ``notes`` say what was added."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()

    @staticmethod
    def of(example_inputs: object) -> Example:
        if isinstance(example_inputs, torch.Tensor):
            return Example((example_inputs,))
        if isinstance(example_inputs, Mapping):
            bad = [k for k in example_inputs if not isinstance(k, str) or not k.isidentifier()]
            if bad:
                raise TracingError(f"keyword example inputs must be named by identifiers, not {bad[0]!r}")
            return Example((), MappingProxyType(dict(example_inputs)))
        if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
            return Example(tuple(example_inputs))
        raise TracingError(f"example_inputs is a {type(example_inputs).__name__}; give a tensor, a sequence of "
                           "tensors (positional inputs) or a dict of keyword inputs")

    @property
    def keyword(self) -> bool:
        return bool(self.kwargs)

    def defaults_for(self, model: nn.Module) -> Example:
        """``use_cache=False`` when the forward takes ``use_cache`` and it was not given: a model asked for its
        cache returns a cache object (Hugging Face's ``DynamicCache``) that no front end can trace through."""
        params = _parameters(model.forward)
        if "use_cache" in params and params["use_cache"].kind not in _VAR and not self._gives("use_cache", params):
            return replace(self, kwargs=MappingProxyType({**self.kwargs, "use_cache": False}),
                           notes=(*self.notes, "use_cache=False (the forward takes use_cache; its cache is not part "
                                               "of a traceable output)"))
        return self

    def named(self, forward: Callable[..., Any], name: str = "the model") -> dict[str, Any]:
        """The inputs by the forward's parameter names (``TracingError`` when they do not bind)."""
        try:
            bound = inspect.signature(forward).bind_partial(*self.args, **self.kwargs)
        except TypeError as exc:
            given = ", ".join([*(f"{len(self.args)} positional" for _ in self.args[:1]), *self.kwargs])
            raise TracingError(f"{name}: the example inputs ({given}) do not fit its forward{_signature(forward)}: "
                               f"{exc}; give the inputs forward takes, by position or by name") from None
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                out.update({f"{name}_{i}": v for i, v in enumerate(value)})
            else:
                out[name] = value
        return out

    def fixed_for_fx(self, model: nn.Module) -> dict[str, Any]:
        """torch.fx's ``concrete_args``: the forward's parameters that were not given, at their defaults, and
        the given values that are not tensors."""
        params = _parameters(model.forward)
        named = self.named(model.forward)
        fixed = {k: v for k, v in named.items() if k in params and not isinstance(v, torch.Tensor)}
        for name, p in params.items():
            if name not in named and p.kind not in _VAR and p.default is not inspect.Parameter.empty:
                fixed[name] = p.default
        return fixed

    def _gives(self, name: str, params: Mapping[str, inspect.Parameter]) -> bool:
        positional = [n for n, p in params.items() if p.kind not in _VAR][:len(self.args)]
        return name in self.kwargs or name in positional


def _parameters(forward: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return MappingProxyType({})


def _signature(forward: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(forward))
    except (TypeError, ValueError):
        return ""
