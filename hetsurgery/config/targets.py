"""What ``inspect``, ``render`` and ``export`` are pointed at: a package folder, a zoo name or a factory.

A factory ``package.module:function`` is imported from the current folder, as ``merge`` imports from the
config's folder. ``--kw key=value`` values are YAML (``--kw hidden=[16,8]``).

>>> parse_kwargs(["hidden=[16, 8]", "num_classes=3"])
{'hidden': [16, 8], 'num_classes': 3}
>>> parse_shape("1,8,8")
(1, 8, 8)
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from hetsurgery.config.build import build_model
from hetsurgery.config.yaml_loader import read_yaml_text, yaml_problem
from hetsurgery.errors import TracingError
from hetsurgery.export import Package, is_package, read_package
from hetsurgery.export.errors import InputError
from hetsurgery.ir import ModelGraph
from hetsurgery.tracing import trace


def parse_kwargs(pairs: Sequence[str]) -> dict[str, object]:
    """``["key=value", ...]`` to keyword arguments, each value read as YAML."""
    out = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.isidentifier():
            raise InputError(f"--kw takes key=value, not {pair!r}")
        try:
            out[key] = read_yaml_text(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"--kw {key}: {raw!r} is not a YAML value ({yaml_problem(exc)})") from exc
    return out


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """``"3,32,32"`` to ``(3, 32, 32)``: one example's shape, without the batch dimension."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise InputError(f"{flag} takes comma-separated positive integers like 1,8,8, not {text!r}")
    return shape


def open_package(folder: str | Path, *, trust_code: bool = False) -> Package:
    """``read_package(folder)``; with ``trust_code`` the package's ``model.py`` may run (``--trust-code``)."""
    options: dict[str, Any] = {"trust_code": True} if trust_code else {}  # the keyword only when the flag is given
    return read_package(folder, **options)


def model_graph(spec: str, kwargs: Sequence[str], input_shape: str, *, trust_code: bool = False) -> ModelGraph:
    """The traced graph of a package folder, or of a zoo model / ``package.module:function`` factory."""
    if is_package(spec):
        pkg = open_package(spec, trust_code=trust_code)
        if not pkg.example_inputs:
            raise InputError(f"{spec} records no example input shape; write the package again with example_inputs=")
        return trace_quietly(pkg.model, pkg.example_inputs, Path(spec).name)
    model = build_model(spec, parse_kwargs(kwargs), spec, base=Path.cwd())
    return trace_quietly(model, torch.randn(2, *parse_shape(input_shape)), spec)


def trace_quietly(model: torch.nn.Module, example: torch.Tensor | Sequence[torch.Tensor], name: str) -> ModelGraph:
    """``trace``, without the traceback that torch.fx's shape propagation prints before it raises.

    What tracing writes to stderr is passed on when it succeeds (warnings) and dropped when the model
    cannot be traced: the ``TracingError`` then says what went wrong.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            graph = trace(model, example, name=name)
    except TracingError:
        raise
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return graph


def package_inputs(pkg: Package, input_shape: str | None) -> tuple[torch.Tensor, ...]:
    """The recorded example inputs, or a batch of two of ``--input-shape`` in the recorded dtype; run once."""
    if input_shape is None:
        if not pkg.example_inputs:
            raise InputError(f"{pkg.folder} records no example input shape; give --input-shape")
        inputs = pkg.example_inputs
    else:
        shape = parse_shape(input_shape)
        dtype = pkg.example_inputs[0].dtype if pkg.example_inputs else torch.float32
        inputs = (torch.randn(2, *shape, dtype=dtype) if dtype.is_floating_point
                  else torch.zeros(2, *shape, dtype=dtype),)
    _check_runs(pkg, inputs, given=input_shape is not None)
    return inputs


def _check_runs(pkg: Package, inputs: Sequence[torch.Tensor], given: bool) -> None:
    """Run the model once, so a wrong shape is named here and not deep inside the ONNX exporter."""
    try:
        with torch.no_grad():
            pkg.model(*inputs)
    except Exception as exc:  # shape errors surface as RuntimeError, ValueError, IndexError, ...
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        saved = ", ".join(str(tuple(x.shape[1:])) for x in pkg.example_inputs) or "no shape"
        hint = (f"--input-shape is one example's shape without the batch dimension; the package was saved "
                f"with {saved}" if given else "the package's example inputs do not fit its model (damaged?)")
        raise InputError(f"{pkg.folder} does not run on inputs of shape {shapes}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}. {hint}") from exc
