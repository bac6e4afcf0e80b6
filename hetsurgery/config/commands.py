"""``render`` and ``export`` as functions: pick the output, check it against the inputs, then do the work.

Their default outputs are new files in the package they read (``PACKAGE/graph.svg``,
``PACKAGE/plan-group-N.svg``, ``PACKAGE/model.onnx``); any other output inside the package is refused,
and so is an output over one of the run's inputs (see ``hetsurgery.config.paths``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from hetsurgery.config.paths import check_file_output, code_inputs
from hetsurgery.config.targets import model_graph, open_package, package_inputs
from hetsurgery.export import ParityReport, Picture, is_package, read_depth, read_plan, render, to_onnx
from hetsurgery.export.depth_pictures import cka_heatmap
from hetsurgery.export.errors import InputError
from hetsurgery.export.pictures import picture_format


def draw(model: str, output: str | None, *, kwargs: Sequence[str] = (), input_shape: str = "1,8,8",
         group: int | None = None, names: Sequence[str] | None = None, trust_code: bool = False,
         depth: bool = False, cka: bool = False, plan_model: int | None = None) -> Picture:
    """The picture of a model's groups and units; with ``group`` of one group of a package's width plan; with
    ``depth`` of a package's depth plan, with ``cka`` of its CKA matrices (``plan_model``: which model's).

    Without Graphviz's ``dot`` the source is written and ``Picture.note`` says how to get ``dot`` (the
    warning that ``render`` also gives is silenced: the caller shows the note once).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if depth or cka:
            return _draw_depth(model, output, names, cka, plan_model)
        return _draw(model, output, kwargs, input_shape, group, names, trust_code)


def _draw_depth(model: str, output: str | None, names: Sequence[str] | None, cka: bool, plan_model: int | None
                ) -> Picture:
    if not is_package(model):
        raise InputError(f"--depth and --cka draw a package's depth plan: give a package folder, not {model!r}")
    package = Path(model)
    plan = read_depth(package)
    if plan is None:
        raise InputError(f"{model} was saved without a depth plan (its models had the same depth)")
    default = package / ("cka.png" if cka else "depth-plan.svg")
    out = Path(output or default)
    if output is not None and not cka:
        picture_format(output)
    check_file_output(out, [], package, default)
    if cka:
        return Picture(cka_heatmap(plan, out, model=plan_model), rendered=True)
    return render(plan, out, model=plan_model, names=names)


def _draw(model: str, output: str | None, kwargs: Sequence[str], input_shape: str, group: int | None,
          names: Sequence[str] | None, trust_code: bool) -> Picture:
    if output is not None:
        picture_format(output)  # refuse a bad suffix before any work
    package = Path(model) if is_package(model) else None
    if group is not None:
        if package is None:
            raise InputError(f"--group draws a width plan: give a package folder with a plan.json, not {model!r}")
        plan = read_plan(package)
        if plan is None:
            raise InputError(f"{model} was saved without a plan")
        if group not in plan.groups:
            raise InputError(f"the plan has no group {group}; it has {', '.join(map(str, plan.groups))}")
        default = package / f"plan-group-{group}.svg"
        out = Path(output or default)
        check_file_output(out, [], package, default)
        return render(plan, out, group=group, names=names)
    default = package / "graph.svg" if package is not None else Path(f"{model.replace(':', '-')}.svg")
    out = Path(output or default)
    check_file_output(out, code_inputs(model, Path.cwd(), "the factory"), package, default)
    return render(model_graph(model, kwargs, input_shape, trust_code=trust_code), out)


def export_onnx(folder: str, output: str | None, *, input_shape: str | None = None, static_batch: bool = False,
                check: bool = True, trust_code: bool = False) -> ParityReport:
    """Export a package to ONNX (default ``PACKAGE/model.onnx``) and compare onnxruntime with torch."""
    pkg = open_package(folder, trust_code=trust_code)
    default = pkg.folder / "model.onnx"
    out = Path(output or default)
    check_file_output(out, [], pkg.folder, default)
    inputs = package_inputs(pkg, input_shape)
    return to_onnx(pkg.model, inputs, out, dynamic_batch=not static_batch, check=check)
