"""The ``hetsurgery`` command line: parse, validate, call one library function per command.

Exit codes: 0 success, 1 the operation failed (a merge, an ONNX parity check), 2 bad input (arguments,
config file, checkpoint, package). Bad input never leaves a partial output folder behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from hetsurgery import zoo
from hetsurgery.errors import HetsurgeryError, InvalidInput, TracingError
from hetsurgery.export import (
    Package,
    Picture,
    is_package,
    read_package,
    read_plan,
    render,
    save,
    to_onnx,
)
from hetsurgery.export.config import MergeConfig, build_data, build_models, device_of, load_config
from hetsurgery.export.pictures import picture_format
from hetsurgery.ir import ModelGraph
from hetsurgery.tracing import trace


class BadInput(Exception):
    """The user's arguments are wrong: exit code 2."""


def _kwargs(pairs: Sequence[str]) -> dict[str, object]:
    out = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.isidentifier():
            raise BadInput(f"--kw takes key=value, not {pair!r}")
        out[key] = yaml.safe_load(raw)
    return out


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise BadInput(f"--input-shape takes comma-separated integers like 1,8,8, not {text!r}") from exc


def _echo(args: argparse.Namespace) -> Callable[[str], None]:
    return (lambda _: None) if args.quiet else print


def _graph(args: argparse.Namespace) -> ModelGraph:
    """The traced graph of a package folder, or of a zoo model / ``package.module:function`` factory."""
    if is_package(args.model):
        pkg = read_package(args.model)
        if not pkg.example_inputs:
            raise BadInput(f"{args.model} records no example input shape")
        return _trace(pkg.model, pkg.example_inputs, Path(args.model).name)
    try:
        model = zoo.resolve(args.model)(**_kwargs(args.kw))
    except (ValueError, TypeError) as exc:
        raise BadInput(str(exc)) from exc
    return _trace(model, torch.randn(2, *_shape(args.input_shape)), args.model)


def _trace(model: torch.nn.Module, example: torch.Tensor | Sequence[torch.Tensor], name: str) -> ModelGraph:
    try:
        return trace(model, example, name=name)
    except TracingError as exc:
        raise BadInput(str(exc)) from exc


def cmd_inspect(args: argparse.Namespace) -> int:
    print(_graph(args).summary())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a missing `dot` is reported once, below
        picture = _render(args)
    if picture.note:
        print(picture.note, file=sys.stderr)
    print(f"{'picture' if picture.rendered else 'graphviz source'}: {picture.path}")
    return 0


def _render(args: argparse.Namespace) -> Picture:
    if args.output is not None:
        picture_format(args.output)  # refuse a bad suffix before tracing
    if args.group is not None:
        if not is_package(args.model):
            raise BadInput(f"--group draws a width plan: give a package folder with a plan.json, not {args.model!r}")
        plan = read_plan(args.model)
        if plan is None:
            raise BadInput(f"{args.model} was saved without a plan")
        if args.group not in plan.groups:
            raise BadInput(f"the plan has no group {args.group}; it has {', '.join(map(str, plan.groups))}")
        out = Path(args.output or Path(args.model) / f"plan-group-{args.group}.svg")
        names = tuple(args.names.split(",")) if args.names else None
        return render(plan, out, group=args.group, names=names)
    default = Path(args.model) / "graph.svg" if is_package(args.model) else f"{args.model.replace(':', '-')}.svg"
    return render(_graph(args), Path(args.output or default))


def cmd_export(args: argparse.Namespace) -> int:
    pkg = read_package(args.package)
    inputs = _shaped_like(pkg, _shape(args.input_shape)) if args.input_shape else pkg.example_inputs
    if not inputs:
        raise BadInput(f"{args.package} records no example input shape; give --input-shape")
    _check_runs(pkg, inputs, given=bool(args.input_shape))
    out = Path(args.output or pkg.folder / "model.onnx")
    report = to_onnx(pkg.model, inputs, out, dynamic_batch=not args.static_batch, check=not args.no_check)
    print(f"parity: {report}")
    print(f"onnx: {report.path}")
    return 0 if report.passed or args.no_check else 1  # --no-check reports a mismatch, never fails on it


def _shaped_like(pkg: Package, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """A batch of two examples of ``shape``, of the dtype the package was saved with (zeros if not floating)."""
    dtype = pkg.example_inputs[0].dtype if pkg.example_inputs else torch.float32
    return (torch.randn(2, *shape, dtype=dtype) if dtype.is_floating_point else torch.zeros(2, *shape, dtype=dtype),)


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
        raise BadInput(f"{pkg.folder} does not run on inputs of shape {shapes}: {type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:300]}. {hint}") from exc


def cmd_merge(args: argparse.Namespace) -> int:
    from hetsurgery.merge import merge

    config_path, out = Path(args.config), Path(args.output)
    if out.exists() and not (out.is_dir() and (is_package(out) or not any(out.iterdir()))):
        raise BadInput(f"{out} exists and is not a hetsurgery package; choose a new output folder")
    cfg = load_config(config_path)
    _check_methods(cfg)
    base = config_path.parent
    steps = tqdm(total=4, desc="merge", unit="step", disable=args.quiet, leave=False)
    with steps:
        steps.set_postfix_str("models and data")
        models = build_models(cfg, base)
        calibration = build_data(cfg.calibration, cfg, base, "train")
        evaluation = build_data(cfg.evaluate, cfg, base, "test") if cfg.evaluate is not None else None
        steps.update()
        steps.set_postfix_str(f"merge ({cfg.width.method})")
        torch.manual_seed(cfg.seed)
        try:
            result = merge(models, calibration, method=cfg.width.method, weights=cfg.merge_weights,
                           reset_bn=cfg.reset_bn, anchor=cfg.anchor, width=cfg.width.target, device=device_of(cfg),
                           progress=not args.quiet, **cfg.width.options)
        except TracingError as exc:
            raise BadInput(str(exc)) from exc
        except ValueError as exc:  # a solver refusing a value of the width section (target, options)
            raise BadInput(f"width (method {cfg.width.method}, options {cfg.width.options or 'default'}, target "
                           f"{cfg.width.target if cfg.width.target is not None else 'default'}): {exc}") from exc
        steps.update()
        steps.set_postfix_str("evaluate")
        scores = _scores(cfg, [*models, result.model], evaluation) if evaluation is not None else None
        steps.update()
        steps.set_postfix_str("save")
        save(result.graph, out, plan=result.plan, report=_merge_report(config_path, cfg, result.report, scores),
             name=cfg.name)
        steps.update()
    print(result.report)
    if scores is not None:
        print(scores)
    print(f"package: {out}")
    return 0


def _check_methods(cfg: MergeConfig) -> None:
    """Bad input before any work: a depth section (not available yet), unknown width options or values."""
    from hetsurgery.merge.options import check_options

    if cfg.depth is not None:
        raise BadInput(f"depth.method {cfg.depth.method!r}: depth alignment is not available in this version; "
                       "the models must have the same depth. Remove the depth section.")
    try:
        check_options(cfg.width.method, cfg.width.options)
    except HetsurgeryError as exc:
        raise BadInput(f"width: {exc}") from exc


def _scores(cfg: MergeConfig, models: list[torch.nn.Module], data: list) -> str:
    """A Markdown table: accuracy (and per-task accuracy when the config names tasks) of each model."""
    from hetsurgery.evaluate import accuracy, task_scores

    assert cfg.evaluate is not None
    tasks = cfg.evaluate.tasks
    names = [spec.name or f"model {k}" for k, spec in enumerate(cfg.models)] + [cfg.name]
    head = "| model | accuracy |" + "".join(f" task {i} |" for i in range(len(tasks or [])))
    lines = [head, "|---|---:|" + "---:|" * len(tasks or [])]
    for name, model in zip(names, models, strict=True):
        if tasks:
            s = task_scores(model, data, tasks)
            lines.append(f"| {name} | {s.joint:.3f} |" + "".join(f" {t:.3f} |" for t in s.per_task))
        else:
            lines.append(f"| {name} | {accuracy(model, data):.3f} |")
    return "\n".join(lines)


def _merge_report(config_path: Path, cfg: MergeConfig, report: object, scores: str | None) -> str:
    models = "\n".join(f"| {spec.name or f'model {k}'} | `{spec.factory}` | `{spec.kwargs}` | "
                       f"{spec.weights or 'factory initialisation'} |" for k, spec in enumerate(cfg.models))
    parts = [f"Merged by `hetsurgery merge {config_path.name}` with `{cfg.width.method}` "
             f"(options {cfg.width.options or 'default'}, seed {cfg.seed}).", "",
             "| model | factory | kwargs | weights |", "|---|---|---|---|", models, ""]
    if scores is not None:
        parts += ["Accuracy on the evaluation data:", "", scores, ""]
    parts += ["```text", str(report), "```", "", "The config:", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None).strip(), "```"]
    return "\n".join(parts)


def cmd_demo(args: argparse.Namespace) -> int:
    from hetsurgery.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet, echo=_echo(args))
    print(result.table())
    print(f"loss barrier of two MLPs: unaligned {result.barrier['unaligned']:.3f}, "
          f"permute-aligned {result.barrier['permute-aligned']:.3f}")
    for what, path in result.paths.items():
        print(f"{what}: {path}")
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a package folder, a zoo name (resnet20, vgg, mlp, ...) or package.module:function")
    p.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="factory keyword argument")
    p.add_argument("--input-shape", default="1,8,8", help="one example's shape, without the batch (1,8,8)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hetsurgery", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    sub = p.add_subparsers(dest="command", required=True)

    ins = sub.add_parser("inspect", parents=[common], help="trace a model and print its permutation groups")
    _model_arguments(ins)
    ins.set_defaults(run=cmd_inspect)

    mrg = sub.add_parser("merge", parents=[common], help="merge the models of a YAML config into a package")
    mrg.add_argument("config", help="the YAML file (see README.md, 'hetsurgery merge')")
    mrg.add_argument("-o", "--output", required=True, help="the package folder to write")
    mrg.set_defaults(run=cmd_merge)

    exp = sub.add_parser("export", parents=[common], help="export a package to ONNX and check it with onnxruntime")
    exp.add_argument("package", help="a package folder written by `hetsurgery merge` or hetsurgery.export.save")
    exp.add_argument("-o", "--output", help="the .onnx file (default: PACKAGE/model.onnx)")
    exp.add_argument("--input-shape", help="one example's shape, if the package records none")
    exp.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a symbolic one")
    exp.add_argument("--no-check", action="store_true", help="report the parity errors but never fail on them")
    exp.set_defaults(run=cmd_export)

    ren = sub.add_parser("render", parents=[common], help="draw a model's groups, or a package's width plan")
    _model_arguments(ren)
    ren.add_argument("-o", "--output", help="the .svg, .png or .gv file")
    ren.add_argument("--group", type=int, help="draw this group of the package's width plan instead")
    ren.add_argument("--names", help="comma-separated model names for the plan's columns")
    ren.set_defaults(run=cmd_render)

    demo = sub.add_parser("demo", parents=[common], help="train two models on disjoint digit tasks, merge them "
                          "every way, compare, save, export to ONNX and draw")
    demo.add_argument("-o", "--out", default="hetsurgery-out", help="output folder (default: hetsurgery-out)")
    demo.add_argument("--quick", action="store_true", help="a smaller network and fewer epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (BadInput, InvalidInput) as exc:
        print(f"hetsurgery {args.command}: {exc}", file=sys.stderr)
        return 2
    except HetsurgeryError as exc:
        print(f"hetsurgery {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a file vanishing: the operation failed, not the input
        print(f"hetsurgery {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
