"""A saved model package: ``model.py``, ``model.safetensors``, ``plan.json``, ``report.md``.

``save`` builds the folder as a hidden sibling, loads it back through its own ``model.py`` and compares
outputs with the original before renaming it into place; ``load`` rebuilds the model from the folder
without unpickling anything (and without the class the model was traced from).

>>> import tempfile, torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
>>> folder = save(g, tempfile.mkdtemp() + "/mlp")
>>> sorted(p.name for p in folder.iterdir())
['model.py', 'model.safetensors', 'plan.json', 'report.md']
>>> load(folder)(torch.randn(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import safetensors.torch
import torch
from torch import fx, nn

from hetsurgery.errors import ExportError
from hetsurgery.export.atomic import atomic_folder
from hetsurgery.export.codegen import InputSpec, dtype_name, layout_of, model_source, versions
from hetsurgery.export.errors import InputError
from hetsurgery.export.onnx import eval_mode, flat_outputs
from hetsurgery.export.report import report_markdown
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module
from hetsurgery.plan.width_plan import WidthPlan

PACKAGE_FILES = ("model.py", "model.safetensors", "plan.json", "report.md")
PLAN_FORMAT = "hetsurgery-plan/1"


@dataclass(frozen=True)
class Package:
    """A loaded package: the model (eval mode), its plan (``None`` if none was saved), example inputs, report."""

    folder: Path
    model: nn.Module = field(repr=False)
    plan: WidthPlan | None = field(repr=False)
    example_inputs: tuple[torch.Tensor, ...] = field(repr=False)
    report: str = field(repr=False)


def save(model_or_graph: nn.Module | ModelGraph, folder: str | os.PathLike[str], *, plan: WidthPlan | None = None,
         report: object | None = None, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
         name: str | None = None) -> Path:
    """Write a package to ``folder`` and return its path.

    ``model_or_graph`` is a ``ModelGraph``, a ``GraphModule`` (``MergeResult.model``) or a plain
    ``nn.Module`` (traced with ``torch.fx``). ``report`` is Markdown text or any object whose ``str`` is
    kept verbatim (a ``MergeReport``). ``example_inputs`` default to the ones the graph was traced with.
    An existing package at ``folder`` is replaced; any other non-empty folder is refused.
    """
    gm, inputs, name = _lowered(model_or_graph, example_inputs, name)
    specs = [(tuple(x.shape), dtype_name(x.dtype)) for x in inputs] or _placeholder_specs(gm)
    layout = layout_of(gm)
    source = model_source(gm, layout, specs, f"{name}: a model package written by hetsurgery.")
    with atomic_folder(folder, may_replace=is_package) as tmp:
        (tmp / "model.py").write_text(source, encoding="utf-8")
        safetensors.torch.save_file(dict(layout.stored), str(tmp / "model.safetensors"),
                                    metadata={"format": "pt", "name": name, "written_by": versions()})
        (tmp / "plan.json").write_text(plan_json(plan), encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(name, gm, layout, specs, plan, report), encoding="utf-8")
        _check_round_trip(tmp, gm, inputs or _random_inputs(specs), name)
    return Path(folder)


def load(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a package, in eval mode: ``model.py`` rebuilds it and reads ``model.safetensors``.

    Loading runs the package's ``model.py``, which is Python code: load packages you trust, as you would
    import any module. Nothing is unpickled. A damaged package raises ``InputError``.
    """
    folder = _package_folder(folder)
    return _model_of(_import_model_py(folder), folder, device)


def read_package(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Package:
    """The model, plan, example inputs and report of a package."""
    folder = _package_folder(folder)
    code = _import_model_py(folder)  # run once: it gives both the model and the example inputs
    model = _model_of(code, folder, device)
    inputs = _example_inputs_of(code, folder)
    report = (folder / "report.md").read_text(encoding="utf-8") if (folder / "report.md").exists() else ""
    return Package(folder, model, read_plan(folder), inputs, report)


def read_plan(folder: str | os.PathLike[str]) -> WidthPlan | None:
    """The width plan saved in ``folder/plan.json`` (``None`` when the model was saved without one)."""
    path = Path(folder) / "plan.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        width = raw["width"]
        return None if width is None else WidthPlan.from_json(json.dumps(width))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a hetsurgery plan file ({PLAN_FORMAT}): {exc}") from exc


def plan_json(plan: WidthPlan | None) -> str:
    """``plan.json``: ``{"format": ..., "width": <WidthPlan.to_json()> or null}`` (depth plans will join it)."""
    width = None if plan is None else json.loads(plan.to_json())
    return json.dumps({"format": PLAN_FORMAT, "width": width}, indent=1)


def is_package(folder: str | os.PathLike[str]) -> bool:
    folder = Path(folder)
    return (folder / "model.py").is_file() and (folder / "model.safetensors").is_file()


def _package_folder(folder: str | os.PathLike[str]) -> Path:
    folder = Path(folder)
    if not is_package(folder):
        missing = [f for f in PACKAGE_FILES[:2] if not (folder / f).is_file()]
        what = "does not exist" if not folder.exists() else f"lacks {' and '.join(missing)}"
        raise InputError(f"{folder} is not a hetsurgery model package: it {what}. Write one with "
                         "hetsurgery.export.save or `hetsurgery merge CONFIG.yaml -o FOLDER`.")
    return folder


def _import_model_py(folder: Path) -> ModuleType:
    """Run ``folder/model.py`` as a fresh module (never registered in ``sys.modules``)."""
    path = folder / "model.py"
    spec = importlib.util.spec_from_file_location(f"hetsurgery_package_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # an edited or damaged model.py: the package's fault, not ours
        raise InputError(f"{path} does not run ({_short(exc)}); the package was changed or damaged after it was "
                         f"written. {_WRITE_AGAIN}") from exc
    return module


def _model_of(code: ModuleType, folder: Path, device: str | torch.device) -> nn.Module:
    """``model.py``'s ``load(folder, device)``; ``InputError`` when it is missing, fails or returns no module."""
    build = getattr(code, "load", None)
    if not callable(build):
        raise InputError(f"{folder / 'model.py'} defines no load(folder, device) function. {_WRITE_AGAIN}")
    try:
        model = build(folder, device)
    except Exception as exc:  # weights that do not fit model.py, a missing tensor, a bad device
        raise InputError(f"{folder}: model.py cannot load model.safetensors ({_short(exc)}); one of them was "
                         f"changed or replaced after the package was written. {_WRITE_AGAIN}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{folder}: model.py's load() returned a {type(model).__name__}, not an nn.Module")
    return model


def _example_inputs_of(code: ModuleType, folder: Path) -> tuple[torch.Tensor, ...]:
    """``model.py``'s ``example_inputs()``; empty when model.py has none (commands then ask for a shape)."""
    make = getattr(code, "example_inputs", None)
    if make is None:
        return ()
    try:
        inputs = tuple(make())
    except Exception as exc:  # an edited model.py
        raise InputError(f"{folder / 'model.py'}: example_inputs() fails ({_short(exc)}). {_WRITE_AGAIN}") from exc
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise InputError(f"{folder / 'model.py'}: example_inputs() must return tensors. {_WRITE_AGAIN}")
    return inputs


def _short(exc: BaseException) -> str:
    """``SyntaxError at line 56: invalid syntax`` or the exception's type and message on one line."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


_WRITE_AGAIN = "Write the package again with hetsurgery.export.save or `hetsurgery merge CONFIG.yaml -o FOLDER`."


def _lowered(obj: nn.Module | ModelGraph, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None,
             name: str | None) -> tuple[fx.GraphModule, list[torch.Tensor], str]:
    given = [example_inputs] if isinstance(example_inputs, torch.Tensor) else list(example_inputs or [])
    if isinstance(obj, ModelGraph):
        return to_module(obj), given or list(obj.example_inputs), name or obj.name
    if isinstance(obj, fx.GraphModule):
        return obj, given, name or type(obj).__name__
    if isinstance(obj, nn.Module):
        try:
            gm = fx.symbolic_trace(obj)
        except Exception as exc:  # fx raises many types for one cause
            raise ExportError(f"{type(obj).__name__}: torch.fx cannot trace the model ({exc}); trace it with "
                              "hetsurgery.trace(model, x, leaf_modules=..., concrete_args=...) and save the graph"
                              ) from exc
        return gm, given, name or type(obj).__name__
    raise ExportError(f"save takes an nn.Module or a ModelGraph, not a {type(obj).__name__}")


def _placeholder_specs(gm: fx.GraphModule) -> list[InputSpec]:
    """Input shapes recorded by shape propagation on the placeholders (empty when there are none)."""
    specs = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            meta = node.meta.get("tensor_meta")
            if meta is None or not hasattr(meta, "shape"):
                return []
            specs.append((tuple(meta.shape), dtype_name(meta.dtype)))
    return specs


def _random_inputs(specs: Sequence[InputSpec]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for shape, dtype in specs:
        kind = getattr(torch, dtype)
        out.append(torch.randn(shape, generator=gen, dtype=kind) if kind.is_floating_point
                   else torch.zeros(shape, dtype=kind))
    return out


def _check_round_trip(folder: Path, gm: fx.GraphModule, inputs: Sequence[torch.Tensor], name: str) -> None:
    """Load the written package through its model.py and compare outputs with ``gm`` on ``inputs``."""
    try:
        twin = _import_model_py(folder).load(folder)
    except Exception as exc:
        raise ExportError(f"{name}: the generated package does not load back: {_short(exc)}") from exc
    if not inputs:
        return
    device = next((t.device for t in gm.state_dict().values()), torch.device("cpu"))
    shapes = ", ".join(f"{tuple(x.shape)} {dtype_name(x.dtype)}" for x in inputs)
    with eval_mode(gm), torch.no_grad():
        try:
            want = flat_outputs(gm(*[x.to(device) for x in inputs]))
        except Exception as exc:  # the user's model on the user's (or traced) inputs
            raise InputError(f"{name}: the model does not run on the example inputs ({shapes}): {_short(exc)}. "
                             "Pass example_inputs= of the shape and dtype the model takes.") from exc
        try:
            got = flat_outputs(twin(*[x.cpu() for x in inputs]))
        except Exception as exc:  # the model runs, its generated code does not: our bug
            raise ExportError(f"{name}: the generated model.py fails on the example inputs ({shapes}) where the "
                              f"model runs: {_short(exc)}; nothing was written") from exc
    if not _same_outputs(want, got):
        raise ExportError(f"{name}: the saved package computes something else than the model; nothing was written")


def _same_outputs(want: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> bool:
    return len(want) == len(got) and all(
        a.dtype == b.dtype and a.shape == b.shape and torch.allclose(a.cpu(), b, rtol=1e-5, atol=1e-6)
        for a, b in zip(want, got, strict=True))
