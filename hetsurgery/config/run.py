"""``hetsurgery merge CONFIG.yaml -o OUT`` as a function: check everything, build, merge, score, save.

Every check of the user's input runs before the first model is built: the output path, the config, the
methods and options, and then the models and both data sets (the evaluation's labels included), so that
a mistake never surfaces after the merge has run. The package is written atomically at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hetsurgery.config.batches import build_data
from hetsurgery.config.build import build_models, device_of
from hetsurgery.config.load import load_config
from hetsurgery.config.paths import check_output, merge_inputs
from hetsurgery.config.report import merge_report, scores_table
from hetsurgery.config.schema import MergeConfig
from hetsurgery.errors import MergeInputError
from hetsurgery.export import is_package, save
from hetsurgery.export.errors import InputError
from hetsurgery.merging import MergeResult


@dataclass(frozen=True)
class MergeRun:
    """What ``run_merge`` did: the merge result, the accuracy table (``None`` without ``evaluate``), the package."""

    result: MergeResult
    scores: str | None
    package: Path


def run_merge(config_path: Path, output: Path, *, progress: bool = True) -> MergeRun:
    """Merge the models of ``config_path`` into the package ``output``; ``InvalidInput`` before any work."""
    from hetsurgery.merging import merge

    cfg = load_config(config_path)
    check_methods(cfg)
    check_output(output, merge_inputs(cfg, config_path))
    if output.exists() and not (output.is_dir() and (is_package(output) or not any(output.iterdir()))):
        raise InputError(f"{output} exists and is not a hetsurgery package; choose a new output folder")
    base = config_path.parent
    steps = tqdm(total=4, desc="merge", unit="step", disable=not progress, leave=False)
    with steps:
        steps.set_postfix_str("models and data")
        models = build_models(cfg, base)
        calibration = build_data(cfg.calibration, cfg, base, "calibration")
        evaluation = build_data(cfg.evaluate, cfg, base, "evaluate") if cfg.evaluate is not None else None
        steps.update()
        steps.set_postfix_str(f"merge ({cfg.width.method})")
        torch.manual_seed(cfg.seed)
        d = cfg.depth
        result = merge(models, calibration, method=cfg.width.method, weights=cfg.merge_weights, reset_bn=cfg.reset_bn,
                       anchor=cfg.anchor, width=cfg.width.target, device=device_of(cfg), progress=progress,
                       depth=None if d is None else d.method, balance="add" if d is None else d.balance,
                       depth_cost="cka" if d is None else d.cost, estimator="sign_of_sum" if d is None else d.estimator,
                       names=[s.name or f"models.{k} ({s.factory})" for k, s in enumerate(cfg.models)], saveable=True,
                       **cfg.width.options)
        steps.update()
        steps.set_postfix_str("evaluate")
        scores = scores_table(cfg, [*models, result.model], evaluation) if evaluation is not None else None
        steps.update()
        steps.set_postfix_str("save")
        save(result.graph, output, plan=result.plan, report=merge_report(config_path, cfg, result.report, scores),
             name=cfg.name, depth=result.depth)
        steps.update()
    return MergeRun(result, scores, output)


def check_methods(cfg: MergeConfig) -> None:
    """Bad input before any work: unknown width options or values."""
    from hetsurgery.merging.options import check_options

    try:
        check_options(cfg.width.method, cfg.width.options)
    except MergeInputError as exc:
        raise MergeInputError(f"width: {exc}") from exc
