"""Three models of different depth and width trained on disjoint digit tasks, merged into one without training.

Model A: MLP 64-64-64 on digits 0-2; model B: MLP 128-96 on digits 3-5; model C: MLP 96 on digits 6-9 (the
heads see all ten classes). ``merge([A, B, C], depth=...)`` balances every model to the depth anchor (the
deepest, then the widest: A) with the depth plan and zips the three jointly; joint accuracy is the argmax over
all ten classes on the whole test set.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

import hetsurgery as hs
from bench.report import machine, write_section
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import Ensemble, TaskScores, task_scores
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train

TASKS3 = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
ARCHS = ((64, 64, 64), (128, 96), (96,))
DEPTHS = ("lma", "sma", "cla")


def train_three(epochs: int, seed: int) -> list[torch.nn.Module]:
    """Model k on task k: architecture ``ARCHS[k]``, seed ``1000 * seed + k``."""
    models = []
    for k, (hidden, classes) in enumerate(zip(ARCHS, TASKS3, strict=True)):
        torch.manual_seed(1000 * seed + k)
        models.append(train(hs.zoo.mlp(list(hidden)), digits("train", classes), epochs=epochs, seed=1000 * seed + k))
    return models


def run(seed: int, epochs: int) -> dict[str, TaskScores]:
    models = train_three(epochs, seed)
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    names = [f"model {'ABC'[k]} ({'-'.join(map(str, h))}, digits {TASKS3[k][0]}-{TASKS3[k][-1]})"
             for k, h in enumerate(ARCHS)]
    scores = {name: task_scores(m, test, TASKS3) for name, m in zip(names, models, strict=True)}
    scores["ensemble (mean of logits)"] = task_scores(Ensemble(models), test, TASKS3)
    for depth in DEPTHS:
        r = hs.merge(models, calib, method="zip", depth=depth, progress=False)
        assert r.depth is not None and r.depth.anchor == 0
        scores[f"merged: {depth.upper()} + zip"] = task_scores(r.model, test, TASKS3)
    return scores


def _fmt(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main(seeds: Sequence[int] = (0, 1, 2), epochs: int = 15) -> str:
    runs = []
    for seed in seeds:
        runs.append(run(seed, epochs))
        print(f"  three models, seed {seed}: " + "  ".join(f"{k.split(' (')[0]} {v.joint:.3f}"
                                                         for k, v in runs[-1].items()), flush=True)
    rows = [f"| {name} | {_fmt([r[name].joint for r in runs])} | "
            + " | ".join(_fmt([r[name].per_task[t] for r in runs]) for t in range(3))
            + f" | {_fmt([r[name].task_avg for r in runs])} |" for name in runs[0]]
    singles = [name for name in runs[0] if name.startswith("model ")]
    merged = [name for name in runs[0] if name.startswith("merged")]
    verdicts = []
    for name in merged:
        each = all(r[name].joint > max(r[s].joint for s in singles) for r in runs)
        mean = statistics.mean(r[name].joint for r in runs)
        best = max(statistics.mean(r[s].joint for r in runs) for s in singles)
        verdicts.append(f"{name.removeprefix('merged: ')}: {100 * mean:.1f} against the best single model's "
                        f"{100 * best:.1f} ({'beats every single model in every seed' if each else 'not in every seed'})")
    text = "\n".join([
        "## Three models of different depth and width, merged",
        "",
        f"Model A: MLP {'-'.join(map(str, ARCHS[0]))} on digits 0-2; model B: MLP {'-'.join(map(str, ARCHS[1]))} on "
        f"digits 3-5; model C: MLP {'-'.join(map(str, ARCHS[2]))} on digits 6-9 ({epochs} epochs each, seeds "
        f"{', '.join(map(str, seeds))}). `hs.merge([A, B, C], calibration, method=\"zip\", depth=...)`: the depth "
        "anchor is the deepest model, then the widest (A); B and C get identity layers where the depth plan puts "
        "them and the three are zipped jointly onto the widest widths. Joint accuracy: argmax over all ten classes "
        "on the 450 test digits; per task: argmax inside the task's classes. Mean ± std over seeds, in percent.",
        "",
        "| model | joint | digits 0-2 | digits 3-5 | digits 6-9 | task avg |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Joint accuracy, merged against each single model: " + "; ".join(verdicts) + ".",
        "",
        f"Command: `python -m bench three_models`. Machine: {machine()}.",
    ])
    write_section("three_models", text)
    return text
