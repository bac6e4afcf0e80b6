"""A saved model package: ``model.py``, ``graph.json``, ``model.safetensors``, ``plan.json``, ``report.md``.

``save`` builds the folder as a hidden sibling, loads it back both ways (from ``graph.json`` and through
its ``model.py``) and compares outputs with the original before renaming it into place. ``load`` checks
the SHA-256 that ``plan.json`` records for each file, rebuilds the model from ``graph.json`` — data whose
every function is on ``allow_list`` — and reads the weights from ``model.safetensors``: nothing is
unpickled and none of the package's code runs. ``trust_code=True`` runs ``model.py`` instead.

>>> import tempfile, torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
>>> folder = save(g, tempfile.mkdtemp() + "/mlp")
>>> sorted(p.name for p in folder.iterdir())
['graph.json', 'model.py', 'model.safetensors', 'plan.json', 'report.md']
>>> load(folder)(torch.randn(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import fx, nn

from hetsurgery.errors import ExportError
from hetsurgery.export.atomic import atomic_folder
from hetsurgery.export.codegen import InputSpec, dtype_name, layout_of, model_source, versions
from hetsurgery.export.containers import plain_outputs
from hetsurgery.export.errors import InputError
from hetsurgery.export.graph_data import graph_document, graph_json
from hetsurgery.export.integrity import check_finite, file_digest
from hetsurgery.export.outputs import PACKAGE, check_folder
from hetsurgery.export.package_files import HASHED_FILES, not_a_package
from hetsurgery.export.reading import from_data, from_model_py, plan_file, random_inputs
from hetsurgery.export.report import report_markdown
from hetsurgery.export.round_trip import check_round_trip
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module
from hetsurgery.passes import specs as pass_specs
from hetsurgery.plan.depth import DepthPlan
from hetsurgery.plan.width_plan import WidthPlan
from hetsurgery.tracing.export_vmap import VMAP_REGION

PLAN_FORMAT = "hetsurgery-plan/2"


@dataclass(frozen=True)
class Package:
    """A loaded package: the model (eval mode), its width plan and depth plan (``None`` if none was saved), the
    structural passes that made its structure (specs, ``hetsurgery.passes.replay``), example inputs, report."""

    folder: Path
    model: nn.Module = field(repr=False)
    plan: WidthPlan | None = field(repr=False)
    example_inputs: tuple[torch.Tensor, ...] = field(repr=False)
    report: str = field(repr=False)
    depth: DepthPlan | None = field(default=None, repr=False)
    passes: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)


def save(model_or_graph: nn.Module | ModelGraph, folder: str | os.PathLike[str], *, plan: WidthPlan | None = None,
         report: object | None = None, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
         name: str | None = None, depth: DepthPlan | None = None, assembly: Mapping[str, Any] | None = None) -> Path:
    """Write a package to ``folder`` and return its path.

    ``model_or_graph`` is a ``ModelGraph``, a ``GraphModule`` (``MergeResult.model``) or a plain
    ``nn.Module`` (traced with ``torch.fx``). ``report`` is Markdown text or any object whose ``str`` is
    kept verbatim (a ``MergeReport``). ``example_inputs`` default to the ones the graph was traced with.
    ``plan.json`` keeps the width ``plan``, the ``depth`` plan, a graph's structural ``passes`` and, for an
    assembled model, the ``assembly`` record (``AssemblyResult.to_dict()``).
    An existing package at ``folder`` is replaced and an empty folder written into; any other folder, a
    symbolic link and a place that cannot be written are refused with ``InputError`` before anything is
    written (``hetsurgery.export.outputs``).
    """
    check_folder(Path(folder), PACKAGE)  # before any work; atomic_folder checks again at the end
    gm, inputs, name = _lowered(model_or_graph, example_inputs, name)
    _refuse_vmap_regions(gm, name)
    specs = [(tuple(x.shape), dtype_name(x.dtype)) for x in inputs] or _placeholder_specs(gm)
    layout = layout_of(gm)
    check_finite(layout.stored, f"{name}: nothing was written")
    source = model_source(gm, layout, specs, f"{name}: a model package written by hetsurgery.")
    graph = graph_json(graph_document(gm, layout, specs))
    with atomic_folder(folder, PACKAGE) as tmp:
        (tmp / "model.py").write_text(source, encoding="utf-8")
        safetensors.torch.save_file(dict(layout.stored), str(tmp / "model.safetensors"),
                                    metadata={"format": "pt", "name": name, "written_by": versions()})
        # safetensors writes 0600 whatever the umask: give it the mode of the files written the usual way
        os.chmod(tmp / "model.safetensors", stat.S_IMODE((tmp / "model.py").stat().st_mode))
        (tmp / "graph.json").write_text(graph, encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(name, gm, layout, specs, plan, report), encoding="utf-8")
        files = {file: file_digest(tmp / file) for file in HASHED_FILES}
        passes = pass_specs(model_or_graph.passes) if isinstance(model_or_graph, ModelGraph) else []
        (tmp / "plan.json").write_text(plan_json(plan, files=files, depth=depth, passes=passes, assembly=assembly),
                                       encoding="utf-8")
        check_round_trip(tmp, gm, inputs or list(random_inputs(specs)), name)
    return Path(folder)


def load(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu", trust_code: bool = False) -> nn.Module:
    """The model of a package, in eval mode, rebuilt from ``graph.json`` and ``model.safetensors``.

    Every file's SHA-256 is checked against ``plan.json``, every function the graph calls against the
    allow-list, every weight for NaN and Inf: ``InputError`` names what is wrong. Nothing is unpickled and
    no code of the package runs. ``trust_code=True`` runs the package's ``model.py`` instead (Python code:
    only for packages you trust); it also loads packages written before ``graph.json`` existed.
    """
    return read_package(folder, device=device, trust_code=trust_code).model


def read_package(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                 trust_code: bool = False) -> Package:
    """The model, plan, example inputs and report of a package (``trust_code`` as for ``load``).

    The example inputs are random tensors of the shapes and dtypes recorded at saving (integer inputs
    are zeros); with ``trust_code`` they come from ``model.py``'s ``example_inputs()``.
    """
    folder = _package_folder(folder)
    plan = plan_file(folder)
    if trust_code:
        model, inputs = from_model_py(folder, plan, device)
    else:
        model, inputs = from_data(folder, plan)
        model = model.to(device)
    report = (folder / "report.md").read_text(encoding="utf-8") if (folder / "report.md").is_file() else ""
    path = folder / "plan.json"
    return Package(folder, model, _width_plan(plan, path), inputs, report, _depth_plan(plan, path),
                   _passes(plan, path))


def read_plan(folder: str | os.PathLike[str]) -> WidthPlan | None:
    """The width plan saved in ``folder/plan.json`` (``None`` when the model was saved without one)."""
    path = Path(folder) / "plan.json"
    if not path.exists():
        return None
    return _width_plan(plan_file(Path(folder)), path)


def plan_json(plan: WidthPlan | None, *, files: Mapping[str, str] | None = None, depth: DepthPlan | None = None,
              passes: Sequence[Mapping[str, Any]] = (), assembly: Mapping[str, Any] | None = None) -> str:
    """The text of ``plan.json``; readers ignore keys they do not know.

    ``{"format": "hetsurgery-plan/2", "width": <WidthPlan.to_json()> or null, "depth": <DepthPlan.to_dict()>
    or null, "passes": [<pass spec>, ...], "files": {"model.py": "sha256:<hex>", "model.safetensors": ...,
    "graph.json": ...}}``; ``files`` is left out when ``None``. ``passes`` are the structural passes that turned
    the traced model into the saved structure, as specs ``hetsurgery.passes.replay`` applies again. An assembled
    model adds ``"assembly"``: which donor gave which unit, with which λ, how it was aligned
    (``hetsurgery.assembly.assembler``); ``read_assembly`` reads it back.
    """
    doc: dict[str, Any] = {"format": PLAN_FORMAT, "width": None if plan is None else json.loads(plan.to_json()),
                           "depth": None if depth is None else depth.to_dict(), "passes": [dict(p) for p in passes]}
    if assembly is not None:
        doc["assembly"] = dict(assembly)
    if files is not None:
        doc["files"] = dict(files)
    return json.dumps(doc, indent=1)


def read_depth(folder: str | os.PathLike[str]) -> DepthPlan | None:
    """The depth plan saved in ``folder/plan.json`` (``None`` when there is none)."""
    path = Path(folder) / "plan.json"
    return _depth_plan(plan_file(Path(folder)), path) if path.exists() else None


def read_assembly(folder: str | os.PathLike[str]) -> Mapping[str, Any] | None:
    """The assembly record saved in ``folder/plan.json`` (``None`` when the model was not assembled)."""
    path = Path(folder) / "plan.json"
    if not path.exists():
        return None
    record = plan_file(Path(folder)).get("assembly")
    if record is not None and not isinstance(record, dict):
        raise InputError(f"{path}: \"assembly\" must be an object, not a {type(record).__name__}")
    return record


def _depth_plan(raw: Mapping[str, Any], path: Path) -> DepthPlan | None:
    depth = raw.get("depth")
    if depth is None:
        return None
    try:
        return DepthPlan.from_dict(depth)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: its depth plan cannot be read ({type(exc).__name__}: {exc})") from exc


def _passes(raw: Mapping[str, Any], path: Path) -> tuple[Mapping[str, Any], ...]:
    passes = raw.get("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, dict) and isinstance(p.get("pass"), str)
                                               for p in passes):
        raise InputError(f"{path}: \"passes\" must be a list of pass specs with a \"pass\" name")
    return tuple(passes)


def _width_plan(raw: Mapping[str, Any], path: Path) -> WidthPlan | None:
    try:
        width = raw["width"]
        return None if width is None else WidthPlan.from_json(json.dumps(width))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a hetsurgery plan file ({PLAN_FORMAT}): {exc}") from exc


def _package_folder(folder: str | os.PathLike[str]) -> Path:
    folder = Path(folder)
    reason = not_a_package(folder)
    if reason is not None:
        raise InputError(f"{folder} is not a hetsurgery model package: {reason}. Write one with "
                         "hetsurgery.export.save or `hetsurgery merge CONFIG.yaml -o FOLDER`.")
    return folder


def _lowered(obj: nn.Module | ModelGraph, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None,
             name: str | None) -> tuple[fx.GraphModule, list[torch.Tensor], str]:
    given = [example_inputs] if isinstance(example_inputs, torch.Tensor) else list(example_inputs or [])
    if isinstance(obj, ModelGraph):
        return plain_outputs(to_module(obj)), given or list(obj.example_inputs), name or obj.name
    if isinstance(obj, fx.GraphModule):
        return plain_outputs(obj), given, name or type(obj).__name__
    if isinstance(obj, nn.Module):
        try:
            gm = fx.symbolic_trace(obj)
        except Exception as exc:  # fx raises many types for one cause
            raise ExportError(f"{type(obj).__name__}: torch.fx cannot trace the model ({exc}); trace it with "
                              "hetsurgery.trace(model, x, leaf_modules=..., concrete_args=...) and save the graph"
                              ) from exc
        return gm, given, name or type(obj).__name__
    raise ExportError(f"save takes an nn.Module or a ModelGraph, not a {type(obj).__name__}")


def _refuse_vmap_regions(gm: fx.GraphModule, name: str) -> None:
    """A region run under ``torch.vmap`` (transformers 4.57 builds attention masks so) is code no package holds."""
    regions = [n for n, m in gm.named_modules() if isinstance(m, fx.GraphModule) and m.meta.get(VMAP_REGION)]
    if regions:
        raise ExportError(f"{name}: part of the forward runs under torch.vmap ({', '.join(regions)}: how transformers "
                          "4.57 builds attention masks), which a package cannot hold; export it to ONNX "
                          "(hetsurgery.export.to_onnx), or trace it with transformers 5, whose masks are plain ops")


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
