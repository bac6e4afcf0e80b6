"""The models of a config (or of a command line): factories called, weights read, shapes checked.

A factory is a zoo name or ``package.module:function``; the module may sit next to the config file (or,
on the command line, in the current folder). Whatever the user's code raises is reported as bad input
that names the factory.

>>> import pathlib, torch
>>> model = build_model("mlp", {"hidden": [8]}, "model 0", base=pathlib.Path("."))
>>> check_input_shape(model, (1, 8, 8), torch.device("cpu"), "model 0")
>>> check_input_shape(model, (3, 32, 32), torch.device("cpu"), "model 0")
Traceback (most recent call last):
...
hetsurgery.export.errors.InputError: model 0 does not run on inputs of shape (2, 3, 32, 32): RuntimeError: ...
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hetsurgery.config.schema import MergeConfig
from hetsurgery.export.checkpoint import load_weights
from hetsurgery.export.errors import InputError
from hetsurgery.zoo import resolve


def build_models(cfg: MergeConfig, base: Path) -> list[nn.Module]:
    """The input models, built by their factories, with their weights, on ``cfg.device``, checked on ``input_shape``."""
    device = device_of(cfg)
    models = []
    for k, spec in enumerate(cfg.models):
        where = f"models.{k} ({spec.name or spec.factory})"
        torch.manual_seed(cfg.seed + k)
        model = build_model(spec.factory, spec.kwargs, where, base)
        if spec.weights is not None:
            load_weights(model, relative(spec.weights, base), name=where)
        models.append(model.to(device).eval())
        check_input_shape(model, cfg.input_shape, device, where)
    return models


def build_model(factory: str, kwargs: Mapping[str, Any], where: str, base: Path) -> nn.Module:
    """``factory(**kwargs)``, the factory named by a zoo name or ``package.module:function`` importable from ``base``."""
    try:
        with importable_from(base):
            make = resolve(factory)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    except Exception as exc:  # importing the user's module ran its code, and that failed
        raise InputError(f"{where}: importing {factory!r} failed: {_short(exc)}") from exc
    model = call_user(make, kwargs, f"{where}: {factory}(**{dict(kwargs)})")
    if not isinstance(model, nn.Module):
        raise InputError(f"{where}: {factory}(**{dict(kwargs)}) returned a {type(model).__name__}, not an "
                         "nn.Module; the factory must build and return the model")
    return model


def call_user(function: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    """``function(**kwargs)``: the user's code, so anything it raises is bad input that names ``what``."""
    try:
        return function(**kwargs)
    except Exception as exc:
        raise InputError(f"{what} failed: {_short(exc)}") from exc


def user_function(spec: str, base: Path, what: str) -> Callable[..., Any]:
    """The callable ``package.module:function`` names, imported with ``base`` on the module path."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise InputError(f"{what} {spec!r} must look like 'package.module:function'")
    try:
        with importable_from(base):
            function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{what}: cannot load {spec!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise InputError(f"{what}: importing {spec!r} failed: {_short(exc)}") from exc
    if not callable(function):
        raise InputError(f"{what} {spec!r} is a {type(function).__name__}, not a function")
    return function


def check_input_shape(model: nn.Module, shape: Sequence[int], device: torch.device, where: str) -> None:
    """Run ``model`` on zeros of ``(2, *shape)``; ``InputError`` when it cannot take them."""
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape, device=device))
    except Exception as exc:  # shape errors surface as RuntimeError, ValueError, IndexError, ...
        raise InputError(f"{where} does not run on inputs of shape {(2, *shape)}: {_short(exc)}. "
                         "input_shape is one example's shape without the batch dimension, e.g. [1, 8, 8] or "
                         "[3, 32, 32].") from exc


def device_of(cfg: MergeConfig) -> torch.device:
    """``cfg.device`` as a torch device (``auto``: CUDA when present); ``InputError`` for CUDA without a GPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {cfg.device!r}: CUDA is not available here; use device: cpu")
    return device


def relative(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


@contextlib.contextmanager
def importable_from(folder: Path) -> Iterator[None]:
    """Let ``factory:`` and ``loader:`` name modules that sit in ``folder`` while it is read."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _short(exc: BaseException) -> str:
    """``RuntimeError: mat1 and mat2 shapes cannot be multiplied`` on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
