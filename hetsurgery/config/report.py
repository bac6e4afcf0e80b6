"""The texts a config-driven merge produces: the accuracy table and the package's report.

>>> from hetsurgery.config.schema import MergeConfig
>>> cfg = MergeConfig.model_validate({"models": [{"factory": "mlp", "name": "A"}, {"factory": "mlp"}],
...                                   "input_shape": [64]})
>>> model_names(cfg)
['A', 'model 1', 'merged']
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from hetsurgery.config.batches import Batch
from hetsurgery.config.schema import MergeConfig


def model_names(cfg: MergeConfig) -> list[str]:
    """The input models' names (``model K`` when unnamed), then the merged model's."""
    return [spec.name or f"model {k}" for k, spec in enumerate(cfg.models)] + [cfg.name]


def scores_table(cfg: MergeConfig, models: list[nn.Module], data: list[Batch]) -> str:
    """A Markdown table: accuracy (and per-task accuracy when the config names tasks) of each model."""
    from hetsurgery.evaluate import accuracy, task_scores

    tasks = cfg.evaluate.tasks if cfg.evaluate is not None else None
    head = "| model | accuracy |" + "".join(f" task {i} |" for i in range(len(tasks or [])))
    lines = [head, "|---|---:|" + "---:|" * len(tasks or [])]
    for name, model in zip(model_names(cfg), models, strict=True):
        if tasks:
            s = task_scores(model, data, tasks)
            lines.append(f"| {name} | {s.joint:.3f} |" + "".join(f" {t:.3f} |" for t in s.per_task))
        else:
            lines.append(f"| {name} | {accuracy(model, data):.3f} |")
    return "\n".join(lines)


def merge_report(config_path: Path, cfg: MergeConfig, report: object, scores: str | None) -> str:
    """``report.md``'s report section: the command, the models, the scores, the merge report and the config."""
    models = "\n".join(f"| {name} | `{spec.factory}` | `{spec.kwargs}` | {spec.weights or 'factory initialisation'} |"
                       for name, spec in zip(model_names(cfg), cfg.models, strict=False))
    parts = [f"Merged by `hetsurgery merge {config_path.name}` with `{cfg.width.method}` "
             f"(options {cfg.width.options or 'default'}, seed {cfg.seed}).", "",
             "| model | factory | kwargs | weights |", "|---|---|---|---|", models, ""]
    if scores is not None:
        parts += ["Accuracy on the evaluation data:", "", scores, ""]
    parts += ["```text", str(report), "```", "", "The config:", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None).strip(), "```"]
    return "\n".join(parts)
