"""``hetsurgery merge CONFIG.yaml -o OUT`` as a function: check everything, build, merge, score, save.

Every check of the user's input runs before the first model is built: the config, the methods and options,
whether the config has the calibration data its methods need, the output path (``hetsurgery.export.outputs``:
a new or empty folder or a package, in a place that can be written), and then the models and both data
sets (the evaluation's labels included), so that a mistake never surfaces after the merge has run. The
package is written atomically at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hetsurgery.config.batches import build_data
from hetsurgery.config.build import build_models, device_of
from hetsurgery.config.calibration import check_batchnorm, check_needs, data_needs, random_example
from hetsurgery.config.load import load_config
from hetsurgery.config.paths import check_output, merge_inputs
from hetsurgery.config.report import merge_report, scores_table
from hetsurgery.config.schema import MergeConfig
from hetsurgery.errors import MergeInputError
from hetsurgery.export import save
from hetsurgery.export.outputs import PACKAGE, check_folder
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
    d = cfg.depth
    check_needs(config_path, cfg.calibration, data_needs(
        cfg.width.method, cfg.width.options, None if d is None else d.method, "cka" if d is None else d.cost,
        "add" if d is None else d.balance))
    check_output(output, merge_inputs(cfg, config_path))
    check_folder(output, PACKAGE)
    base = config_path.parent
    steps = tqdm(total=4, desc="merge", unit="step", disable=not progress, leave=False)
    with steps:
        steps.set_postfix_str("models and data")
        models = build_models(cfg, base)
        check_batchnorm(config_path, cfg.calibration, cfg.reset_bn,
                        [(f"models.{k} ({spec.name or spec.factory})", m) for k, (spec, m) in
                         enumerate(zip(cfg.models, models, strict=True))])
        calibration = build_data(cfg.calibration, cfg, base, "calibration") if cfg.calibration is not None else None
        evaluation = build_data(cfg.evaluate, cfg, base, "evaluate") if cfg.evaluate is not None else None
        steps.update()
        steps.set_postfix_str(f"merge ({cfg.width.method})")
        torch.manual_seed(cfg.seed)
        example = random_example(cfg.input_shape, device_of(cfg)) if calibration is None else None
        result = merge(models, calibration, method=cfg.width.method, weights=cfg.merge_weights, reset_bn=cfg.reset_bn,
                       anchor=cfg.anchor, width=cfg.width.target, device=device_of(cfg), progress=progress,
                       depth=None if d is None else d.method, balance="add" if d is None else d.balance,
                       depth_cost="cka" if d is None else d.cost, estimator="sign_of_sum" if d is None else d.estimator,
                       names=[s.name or f"models.{k} ({s.factory})" for k, s in enumerate(cfg.models)], saveable=True,
                       example_inputs=example, **cfg.width.options)
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
