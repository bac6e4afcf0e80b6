"""Read model weights without unpickling code: safetensors, or ``torch.load(weights_only=True)``.

A checkpoint that holds a whole pickled ``nn.Module`` (``torch.save(model)``) is refused: loading it would
run arbitrary code. Save ``model.state_dict()`` instead.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from hetsurgery.export.errors import InputError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``state_dict`` saved with ``torch.save``.

    A checkpoint of the form ``{"state_dict": {...}, ...}`` (Lightning and most trainers) gives its
    ``state_dict``. Anything else raises ``InputError`` saying what was found and what to save instead.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as exc:  # safetensors raises SafetensorError, OSError, ...
            raise InputError(f"{path} is not a readable safetensors file: {exc}") from exc
    if path.suffix not in TORCH_SUFFIXES:
        raise InputError(f"{path}: weights must be a .safetensors file or a torch state_dict "
                         f"({', '.join(TORCH_SUFFIXES)}), not {path.suffix or 'a file without suffix'}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled object, or a truncated or foreign file
        raise _unreadable(path, exc) from exc
    return _state_dict(raw, path)


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, name: str = "model") -> nn.Module:
    """Load ``path`` into ``model`` strictly (every key present, every shape equal); returns ``model``."""
    try:
        state = read_weights(path)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n", 1)[-1].split()).rstrip(".")
        raise InputError(f"{name}: the weights in {path} do not fit the model built by its factory: {detail}. "
                         "Check the factory's kwargs (widths, depth) against the checkpoint.") from exc
    return model


def _unreadable(path: Path, exc: Exception) -> InputError:
    """Why ``torch.load(weights_only=True)`` refused ``path``: a pickled object it will not build, or not a checkpoint."""
    refused = _refused_global(exc)
    if refused is not None:
        return InputError(
            f"{path} holds pickled Python objects (it needs {refused}: a whole nn.Module saved with "
            "torch.save(model)?), not only tensors. hetsurgery never unpickles code. Re-save the weights with "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), path).")
    inner = exc.__context__ if isinstance(exc.__context__, Exception) else exc  # torch wraps the unpickler's error
    detail = (str(inner).strip().splitlines() or [""])[0]
    return InputError(f"{path} is not a readable torch checkpoint ({type(inner).__name__}: {detail}); it is "
                      "truncated, damaged or in another format. Weights must be a .safetensors file (named "
                      ".safetensors) or a state_dict saved with torch.save(model.state_dict(), path).")


def _refused_global(exc: Exception) -> str | None:
    """The class or function the weights-only unpickler refused to build (``None``: it refused no global)."""
    for err in (exc, exc.__context__, exc.__cause__):
        if not isinstance(err, pickle.UnpicklingError):
            continue
        found = _GLOBAL.search(str(err))
        if found:
            return found.group(1) or found.group(2) or "an object it may not build"
    return None


# the weights-only unpickler's words for an object it will not build (torch/_weights_only_unpickler.py)
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+)|Can only create new object"
                     r"|call reduce for unrecognized function")


def _state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise InputError(f"{path} holds a {type(raw).__name__}, not a state_dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{path}: a state_dict maps names to tensors; these entries are not tensors: "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return dict(raw)
