"""Running a package's ``model.py`` (``load(folder, trust_code=True)``): it is Python code, so only for
packages you trust, as you would import any module.

The source is run from the very bytes whose SHA-256 was checked, as a fresh module that is never put in
``sys.modules`` and leaves no byte code in the package folder.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "model.py"
>>> code = run_model_py(path, b"def example_inputs():\\n    return ()\\n")
>>> example_inputs_of(code, path.parent)
()
"""

from __future__ import annotations

import types
import uuid
from pathlib import Path

import torch
from torch import nn

from hetsurgery.export.errors import InputError

WRITE_AGAIN = "Write the package again with hetsurgery.export.save or `hetsurgery merge CONFIG.yaml -o FOLDER`."


def run_model_py(path: Path, source: bytes) -> types.ModuleType:
    """Run ``source`` (the text of ``path``) as a fresh module whose ``__file__`` is ``path``."""
    module = types.ModuleType(f"hetsurgery_package_{uuid.uuid4().hex}")
    module.__file__ = str(path)
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # the caller asked for it: trust_code=True
    except Exception as exc:  # an edited or damaged model.py: the package's fault, not ours
        raise InputError(f"{path} does not run ({short(exc)}); the package was changed or damaged after it was "
                         f"written. {WRITE_AGAIN}") from exc
    return module


def model_of(code: types.ModuleType, folder: Path, device: str | torch.device) -> nn.Module:
    """``model.py``'s ``load(folder, device)``; ``InputError`` when it is missing, fails or returns no module."""
    build = getattr(code, "load", None)
    if not callable(build):
        raise InputError(f"{folder / 'model.py'} defines no load(folder, device) function. {WRITE_AGAIN}")
    try:
        model = build(folder, device)
    except Exception as exc:  # weights that do not fit model.py, a missing tensor, a bad device
        raise InputError(f"{folder}: model.py cannot load model.safetensors ({short(exc)}); one of them was "
                         f"changed or replaced after the package was written. {WRITE_AGAIN}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{folder}: model.py's load() returned a {type(model).__name__}, not an nn.Module")
    return model


def example_inputs_of(code: types.ModuleType, folder: Path) -> tuple[torch.Tensor, ...]:
    """``model.py``'s ``example_inputs()``; empty when model.py has none (commands then ask for a shape)."""
    make = getattr(code, "example_inputs", None)
    if make is None:
        return ()
    try:
        inputs = tuple(make())
    except Exception as exc:  # an edited model.py
        raise InputError(f"{folder / 'model.py'}: example_inputs() fails ({short(exc)}). {WRITE_AGAIN}") from exc
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise InputError(f"{folder / 'model.py'}: example_inputs() must return tensors. {WRITE_AGAIN}")
    return inputs


def short(exc: BaseException) -> str:
    """``SyntaxError at line 56: invalid syntax`` or the exception's type and message on one line."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
