"""Reading a package folder: ``plan.json``, then the model either from ``graph.json`` (data, checked
against the allow-list) or from the package's own ``model.py`` (``trust_code``), each file checked
against the SHA-256 that ``plan.json`` records and every weight checked for NaN and Inf.

Packages written before ``graph.json`` existed record no digests: ``from_data`` refuses them with a
message that says how to write them again; ``from_model_py`` still runs their ``model.py``.

>>> import tempfile, torch, hetsurgery as hs
>>> from hetsurgery.export.package import save
>>> folder = save(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)), tempfile.mkdtemp() + "/p")
>>> model, inputs = from_data(folder, plan_file(folder))
>>> model(*inputs).shape
torch.Size([2, 2])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from hetsurgery.export.errors import InputError
from hetsurgery.export.graph_data import read_graph_data
from hetsurgery.export.integrity import check_digest, check_finite, digest, file_digest
from hetsurgery.export.model_py import WRITE_AGAIN, example_inputs_of, model_of, run_model_py, short
from hetsurgery.export.rebuild import RebuildError, rebuild

Loaded = tuple[nn.Module, tuple[torch.Tensor, ...]]  # the model and its example inputs


def plan_file(folder: Path) -> Mapping[str, Any]:
    """The JSON object of ``folder/plan.json``; ``InputError`` when it is not one."""
    path = folder / "plan.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path} is not a hetsurgery plan file: {short(exc)}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path} is not a hetsurgery plan file: it holds a {type(raw).__name__}, not an object")
    return raw


def from_data(folder: Path, plan: Mapping[str, Any]) -> Loaded:
    """The model rebuilt from ``graph.json`` (on the CPU) and the example inputs it records; no package code runs."""
    recorded = plan.get("files")
    if not isinstance(recorded, dict):
        raise InputError(
            f"{folder} was written by an older hetsurgery: its plan.json records no SHA-256 of its files and it has "
            "no graph.json, so it loads only by running its model.py. If you trust whoever wrote it, load it with "
            "trust_code=True (`--trust-code` on the command line) and save it again with hetsurgery.export.save; "
            "or write it again from the original models.")
    graph_bytes = _read_bytes(folder / "graph.json")  # checked and parsed from the same bytes
    check_digest(folder, "graph.json", digest(graph_bytes), recorded)
    _check_files(folder, recorded, ("model.py", "model.safetensors"))
    try:
        raw_graph = json.loads(graph_bytes)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{folder / 'graph.json'} is not JSON ({short(exc)}). {WRITE_AGAIN}") from exc
    data = read_graph_data(raw_graph, str(folder / "graph.json"))
    try:
        model = rebuild(data, _weights(folder))
    except (RebuildError, TypeError, ValueError, RuntimeError) as exc:  # a layer refusing its arguments, too
        raise InputError(f"{folder}: graph.json and model.safetensors do not fit together ({short(exc)}). "
                         f"{WRITE_AGAIN}") from exc
    return model, random_inputs(data.inputs)


def from_model_py(folder: Path, plan: Mapping[str, Any], device: str | torch.device) -> Loaded:
    """The model and example inputs of the package's own ``model.py``, run once (``trust_code=True``)."""
    source = _read_bytes(folder / "model.py")  # checked and run from the same bytes
    recorded = plan.get("files")
    if isinstance(recorded, dict):  # packages written before the digests have none to check
        check_digest(folder, "model.py", digest(source), recorded)
        _check_files(folder, recorded, ("graph.json", "model.safetensors"))
    code = run_model_py(folder / "model.py", source)
    model = model_of(code, folder, device)
    check_finite({**dict(model.named_parameters()), **dict(model.named_buffers())}, str(folder / "model.safetensors"))
    return model, example_inputs_of(code, folder)


def random_inputs(specs: Sequence[tuple[Sequence[int], str]]) -> tuple[torch.Tensor, ...]:
    """Seeded random tensors of the given (shape, dtype name) specs; integer inputs are zeros."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for shape, dtype in specs:
        kind = getattr(torch, dtype)
        out.append(torch.randn(tuple(shape), generator=gen, dtype=kind) if kind.is_floating_point
                   else torch.zeros(tuple(shape), dtype=kind))
    return tuple(out)


def _check_files(folder: Path, recorded: Mapping[str, Any], names: Sequence[str]) -> None:
    for name in names:
        path = folder / name
        if not path.is_file():
            raise InputError(f"{folder} lacks {name}. {WRITE_AGAIN}")
        check_digest(folder, name, file_digest(path), recorded)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    try:
        # clone: fresh, aligned memory (kernels may round by alignment)
        tensors = {name: t.clone() for name, t in safetensors.torch.load_file(str(path)).items()}
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ...
        raise InputError(f"{path} is not a readable safetensors file ({short(exc)}). {WRITE_AGAIN}") from exc
    check_finite(tensors, str(path))
    return tensors


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(f"{path.parent} lacks {path.name}. {WRITE_AGAIN}")
    return path.read_bytes()
