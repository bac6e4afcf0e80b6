"""``render`` and ``export`` as functions: pick the output, check it against the inputs, then do the work.

Their default outputs are new files in the package they read (``PACKAGE/graph.svg``,
``PACKAGE/plan-group-N.svg``, ``PACKAGE/depth-plan.svg``, ``PACKAGE/cka.png``, ``PACKAGE/model.onnx``); any
other output inside the package is refused, and so is an output over one of the run's inputs (see
``hetsurgery.config.paths``) and, without ``force``, an existing file that lies in no package (see
``hetsurgery.export.outputs``). Every check runs before any work.
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
from hetsurgery.export.pictures import picture_format, written_path


def draw(model: str, output: str | None, *, kwargs: Sequence[str] = (), input_shape: str = "1,8,8",
         group: int | None = None, names: Sequence[str] | None = None, trust_code: bool = False,
         depth: bool = False, cka: bool = False, plan_model: int | None = None, force: bool = False) -> Picture:
    """The picture of a model's groups and units; with ``group`` of one group of a package's width plan; with
    ``depth`` of a package's depth plan, with ``cka`` of its CKA matrices (``plan_model``: which model's).

    ``group``, ``depth`` and ``cka`` each ask for another picture: at most one of them is given; ``names`` label
    a plan's models (with ``group`` or ``depth``), ``plan_model`` picks a depth plan's model (with ``depth`` or
    ``cka``). An existing file at ``output`` outside a package is replaced only with ``force``. Without
    Graphviz's ``dot`` the source is written and ``Picture.note`` says how to get ``dot`` (the warning that
    ``render`` also gives is silenced: the caller shows the note once).
    """
    check_picture_options(group=group, depth=depth, cka=cka, names=names, plan_model=plan_model)
    if output is not None:
        _check_format(output, cka)  # a bad suffix before any work
    package = Path(model) if is_package(model) else None
    if package is None and (depth or cka):
        raise InputError(f"--depth and --cka draw a package's depth plan: give a package folder, not {model!r}")
    if package is None and group is not None:
        raise InputError(f"--group draws a width plan: give a package folder with a plan.json, not {model!r}")
    default = default_picture(model, group=group, depth=depth, cka=cka)
    out = Path(output) if output is not None else default
    inputs = code_inputs(model, Path.cwd(), "the factory") if package is None else []
    check_file_output(_written(out, cka), inputs, package, _written(default, cka), force=force)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if package is not None and (depth or cka):
            return _draw_depth(package, out, names, cka, plan_model)
        if package is not None and group is not None:
            return _draw_group(package, out, group, names)
        return render(model_graph(model, kwargs, input_shape, trust_code=trust_code), out)


def check_picture_options(*, group: int | None, depth: bool, cka: bool, names: Sequence[str] | None,
                          plan_model: int | None) -> None:
    """``InputError`` for options that ask for two pictures at once, or that the picture asked for ignores."""
    asked = [flag for flag, on in (("--group", group is not None), ("--depth", depth), ("--cka", cka)) if on]
    if len(asked) > 1:
        raise InputError(f"{' and '.join(asked)} each draw another picture; give one of them (run render once per "
                         "picture)")
    if names is not None and not (group is not None or depth):
        raise InputError("--names labels the models of a plan: give it with --group or --depth")
    if plan_model is not None and not (depth or cka):
        raise InputError("--plan-model picks the model of a depth plan: give it with --depth or --cka")


def default_picture(model: str, *, group: int | None = None, depth: bool = False, cka: bool = False) -> Path:
    """Where ``draw`` writes without an output: a new file in the package, or ``MODEL.svg`` here."""
    if cka or depth or group is not None:
        return Path(model) / ("cka.png" if cka else "depth-plan.svg" if depth else f"plan-group-{group}.svg")
    return Path(model) / "graph.svg" if is_package(model) else Path(f"{model.replace(':', '-')}.svg")


def picture_file(model: str, output: str | None, *, group: int | None = None, depth: bool = False,
                 cka: bool = False) -> Path:
    """The file ``draw`` writes (its ``.gv`` source instead of a picture when Graphviz's ``dot`` is missing)."""
    return _written(Path(output) if output is not None else default_picture(model, group=group, depth=depth,
                                                                            cka=cka), cka)


def _written(path: Path, cka: bool) -> Path:
    return path if cka else written_path(path)  # the CKA heatmap is drawn by matplotlib, not by dot


def _draw_depth(package: Path, out: Path, names: Sequence[str] | None, cka: bool, plan_model: int | None
                ) -> Picture:
    plan = read_depth(package)
    if plan is None:
        raise InputError(f"{package} was saved without a depth plan (its models had the same depth)")
    if cka:
        return Picture(cka_heatmap(plan, out, model=plan_model), rendered=True)
    return render(plan, out, model=plan_model, names=names)


def _draw_group(package: Path, out: Path, group: int, names: Sequence[str] | None) -> Picture:
    plan = read_plan(package)
    if plan is None:
        raise InputError(f"{package} was saved without a plan")
    if group not in plan.groups:
        raise InputError(f"the plan has no group {group}; it has {', '.join(map(str, plan.groups))}")
    return render(plan, out, group=group, names=names)


def _check_format(output: str, cka: bool) -> None:
    if not cka:
        picture_format(output)
    elif Path(output).suffix.lower() not in (".png", ".svg"):
        raise InputError(f"cannot draw the CKA heatmap to {Path(output).name}: use a .png or .svg file name")


def export_onnx(folder: str, output: str | None, *, input_shape: str | None = None, static_batch: bool = False,
                check: bool = True, trust_code: bool = False, force: bool = False) -> ParityReport:
    """Export a package to ONNX (default ``PACKAGE/model.onnx``) and compare onnxruntime with torch.

    ``output`` ends in ``.onnx``; an existing file there outside a package is replaced only with ``force``
    (and so is its external-data file ``OUTPUT.data``, written beside a model above 2 GB).
    """
    default = Path(folder) / "model.onnx"
    out = Path(output or default)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"the output {out} does not end in .onnx; give a file name like model.onnx")
    if is_package(folder):  # what is not a package is refused by open_package below, naming the reason
        for path, usual in ((out, default), (out.with_name(out.name + ".data"), default.with_name("model.onnx.data"))):
            check_file_output(path, [], Path(folder), usual, force=force)
    pkg = open_package(folder, trust_code=trust_code)
    inputs = package_inputs(pkg, input_shape)
    return to_onnx(pkg.model, inputs, out, dynamic_batch=not static_batch, check=check)
