"""``hetsurgery assemble CONFIG.yaml -o OUT`` as a function: check, build, assemble, score, save.

As ``run_merge``: the output path, the config and the alignment options are checked before the first model
is built, the models and data sets (the evaluation's labels included) before the assembly, the units and λ
before any donor is touched; the package is written atomically at the end, ``plan.json`` holding the
assembly record under ``"assembly"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from hetsurgery.assembly import AssemblyResult
from hetsurgery.config.assembly_schema import AssemblyConfig
from hetsurgery.config.batches import build_data
from hetsurgery.config.build import build_model, check_input_shape, device_of, relative
from hetsurgery.config.calibration import check_batchnorm, check_needs, data_needs, random_example
from hetsurgery.config.load import read_config
from hetsurgery.config.paths import Input, check_output, code_inputs
from hetsurgery.config.report import scores_table
from hetsurgery.config.schema import MergeConfig, ModelSpec
from hetsurgery.errors import MergeInputError
from hetsurgery.export import load_weights, save
from hetsurgery.export.outputs import PACKAGE, check_folder

EXAMPLE_HEADER = """\
# hetsurgery assemble CONFIG.yaml -o OUT: every key, with its meaning. Relative file names are read from
# this file's folder. Lines starting with '#' followed by a key are optional: remove the '#' to use one.
# Unit keys (layers:, lam: {unit: λ}) are the base's units as `hetsurgery inspect` lists them. Save the
# weights of each model with safetensors.torch.save_file(model.state_dict(), "base.safetensors")
# or torch.save(model.state_dict(), "wide.pt"). Donors of another depth than the base's need depth:."""


@dataclass(frozen=True)
class AssemblyRun:
    """What ``run_assembly`` did: the result, the accuracy table (``None`` without ``evaluate``), the package."""

    result: AssemblyResult
    scores: str | None
    package: Path


def run_assembly(config_path: Path, output: Path, *, progress: bool = True) -> AssemblyRun:
    """Assemble the models of ``config_path`` into the package ``output``; ``InvalidInput`` before any work."""
    from hetsurgery.assembly import Donor, assemble
    from hetsurgery.merging.options import check_options

    cfg = read_config(config_path, AssemblyConfig, "assemble")
    try:
        check_options(cfg.align.method, cfg.align.options)
    except MergeInputError as exc:
        raise MergeInputError(f"align: {exc}") from exc
    d = cfg.depth
    check_needs(config_path, cfg.calibration, data_needs(
        cfg.align.method, cfg.align.options, None if d is None else d.method, "cka" if d is None else d.cost,
        section="align"))
    check_output(output, assembly_inputs(cfg, config_path))
    check_folder(output, PACKAGE)
    folder, view = config_path.parent, _merge_view(cfg)
    steps = tqdm(total=4, desc="assemble", unit="step", disable=not progress, leave=False)
    with steps:
        steps.set_postfix_str("models and data")
        specs = _specs(cfg)
        models = [_build(spec, where, k, cfg, folder) for k, (where, spec) in enumerate(specs)]
        check_batchnorm(config_path, cfg.calibration, cfg.reset_bn,
                        [(f"{where} ({spec.name or spec.factory})", m) for (where, spec), m in zip(specs, models,
                                                                                                    strict=True)])
        calibration = build_data(cfg.calibration, view, folder, "calibration") if cfg.calibration is not None else None
        evaluation = build_data(cfg.evaluate, view, folder, "evaluate") if cfg.evaluate is not None else None
        steps.update()
        steps.set_postfix_str(f"assemble ({cfg.align.method})")
        torch.manual_seed(cfg.seed)
        example = random_example(cfg.input_shape, device_of(view)) if calibration is None else None
        donors = [Donor(m, layers=spec.layers, lam=spec.lam, name=spec.name or f"donors.{k}")
                  for k, (m, spec) in enumerate(zip(models[1:], cfg.donors, strict=True))]
        result = assemble(models[0], donors, calibration, layers=cfg.layers, lam=cfg.lam, align=cfg.align.method,
                          depth=None if d is None else d.method, depth_cost="cka" if d is None else d.cost,
                          estimator="sign_of_sum" if d is None else d.estimator, reset_bn=cfg.reset_bn,
                          example_inputs=example, device=device_of(view), progress=progress,
                          base_name=cfg.base.name or "base", saveable=True, **cfg.align.options)
        steps.update()
        steps.set_postfix_str("evaluate")
        scores = scores_table(view, [*models, result.model], evaluation) if evaluation is not None else None
        steps.update()
        steps.set_postfix_str("save")
        save(result.graph, output, report=assembly_report(config_path, cfg, result, scores), name=cfg.name,
             assembly=result.to_dict())
        steps.update()
    return AssemblyRun(result, scores, output)


def assembly_inputs(cfg: AssemblyConfig, config_path: Path) -> list[Input]:
    """What ``hetsurgery assemble`` reads: the config, every weights file, every factory's and loader's module."""
    folder = config_path.parent
    inputs = [Input(config_path, "the config file")]
    for where, spec in _specs(cfg):
        if spec.weights is not None:
            inputs.append(Input(relative(spec.weights, folder), f"the weights of {where}"))
        inputs += code_inputs(spec.factory, folder, f"the factory of {where}")
    for section, data in (("calibration", cfg.calibration), ("evaluate", cfg.evaluate)):
        if data is not None and data.loader is not None:
            inputs += code_inputs(data.loader, folder, f"the {section} loader")
    return inputs


def assembly_report(config_path: Path, cfg: AssemblyConfig, result: AssemblyResult, scores: str | None) -> str:
    """``report.md``'s report section: the command, the models, the scores, the assembly record, the config."""
    rows = "\n".join(f"| {where} | {spec.name or ''} | `{spec.factory}` | `{spec.kwargs}` | "
                     f"{spec.weights or 'factory initialisation'} |" for where, spec in _specs(cfg))
    parts = [f"Assembled by `hetsurgery assemble {config_path.name}`: the base absorbs its donors' units, aligned "
             f"by `{cfg.align.method}` (options {cfg.align.options or 'default'}, seed {cfg.seed}).", "",
             "| role | name | factory | kwargs | weights |", "|---|---|---|---|---|", rows, ""]
    if scores is not None:
        parts += ["Accuracy on the evaluation data:", "", scores, ""]
    parts += ["```text", str(result), "```", "", "The config:", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None).strip(), "```"]
    return "\n".join(parts)


def _specs(cfg: AssemblyConfig) -> list[tuple[str, ModelSpec]]:
    """``(key path, spec)`` of the base, then of every donor."""
    return [("base", cfg.base), *((f"donors.{k}", spec) for k, spec in enumerate(cfg.donors))]


def _build(spec: ModelSpec, where: str, k: int, cfg: AssemblyConfig, folder: Path) -> nn.Module:
    """One model as ``merge`` builds it: its factory (seeded), its weights, on the device, run on ``input_shape``."""
    label = f"{where} ({spec.name or spec.factory})"
    device = device_of(_merge_view(cfg))
    torch.manual_seed(cfg.seed + k)
    model = build_model(spec.factory, spec.kwargs, label, folder)
    if spec.weights is not None:
        load_weights(model, relative(spec.weights, folder), name=label)
    model = model.to(device).eval()
    check_input_shape(model, cfg.input_shape, device, label)
    return model


def _merge_view(cfg: AssemblyConfig) -> MergeConfig:
    """The assembly's models, data and device as a merge config, for the builders and the scores merge shares:
    the models named as the accuracy table shows them (the base, each donor), the assembled model last."""
    specs = [ModelSpec(factory=spec.factory, kwargs=spec.kwargs, weights=spec.weights,
                       name=spec.name or ("base" if where == "base" else where)) for where, spec in _specs(cfg)]
    return MergeConfig(models=specs, input_shape=cfg.input_shape, calibration=cfg.calibration, evaluate=cfg.evaluate,
                       seed=cfg.seed, device=cfg.device, name=cfg.name)
