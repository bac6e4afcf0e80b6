"""Accuracy of merging two models trained on disjoint digit tasks (0-4 vs 5-9), mean ± std over seeds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

import hetsurgery as hs
from bench.report import machine, write_section
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import Ensemble, TaskScores, task_scores
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

METHODS = [("average", "average", {}), ("permute", "permute", {}), ("weight", "weight", {}), ("ot", "ot", {}),
           ("ot (weights)", "ot", {"cost": "weights"}), ("zip", "zip", {})]


def evaluate_pair(a: nn.Module, b: nn.Module, methods: Sequence[tuple[str, str, dict]]
                  ) -> tuple[dict[str, TaskScores], dict[str, float]]:
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    scores = {"model A": task_scores(a, test, TASKS), "model B": task_scores(b, test, TASKS),
              "ensemble": task_scores(Ensemble([a, b]), test, TASKS)}
    seconds = {}
    for label, method, options in methods:
        clock = time.perf_counter()
        merged = hs.merge([a, b], calib, method=method, progress=False, **options)
        seconds[label] = time.perf_counter() - clock
        scores[label] = task_scores(merged.model, test, TASKS)
    return scores, seconds


def table(runs: list[tuple[dict[str, TaskScores], dict[str, float]]]) -> str:
    def fmt(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"

    lines = ["| model | joint | task A | task B | task avg | merge time (s) |", "|---|---|---|---|---|---|"]
    for name in runs[0][0]:
        cols = [fmt([r[0][name].joint for r in runs]), fmt([r[0][name].per_task[0] for r in runs]),
                fmt([r[0][name].per_task[1] for r in runs]), fmt([r[0][name].task_avg for r in runs])]
        secs = f"{statistics.mean(r[1][name] for r in runs):.2f}" if name in runs[0][1] else ""
        lines.append(f"| {name} | {' | '.join(cols)} | {secs} |")
    return "\n".join(lines)


def run_pairs(factories: tuple[Callable[[], nn.Module], Callable[[], nn.Module]], seeds: Sequence[int],
              methods: Sequence[tuple[str, str, dict]], epochs: int) -> list:
    runs = []
    for seed in seeds:
        a, b = train_pair_two(factories, epochs, seed)
        runs.append(evaluate_pair(a, b, methods))
        print(f"  seed {seed}: " + "  ".join(f"{k} {v.joint:.3f}" for k, v in runs[-1][0].items()), flush=True)
    return runs


def train_pair_two(factories: tuple[Callable[[], nn.Module], Callable[[], nn.Module]], epochs: int, seed: int
                   ) -> tuple[nn.Module, nn.Module]:
    """Model A on task A from the first factory, model B on task B from the second (train_pair's seeds)."""
    models = []
    for t, (factory, classes) in enumerate(zip(factories, TASKS, strict=True)):
        torch.manual_seed(1000 * seed + t)
        models.append(train(factory(), digits("train", classes), epochs=epochs, seed=1000 * seed + t))
    return models[0], models[1]


def main(seeds: Sequence[int] = (0, 1, 2), epochs: int = 15) -> str:
    print("accuracy: ResNet-20 pairs on digits 0-4 vs 5-9", flush=True)
    runs = run_pairs((hs.zoo.resnet20, hs.zoo.resnet20), seeds, METHODS, epochs)
    text = "\n".join([
        "## Merging same-architecture models: digits 0-4 vs 5-9",
        "",
        f"Two CIFAR-style ResNet-20s (widths 16/32/64, 1x1-conv shortcuts, ~270k parameters), model A trained on "
        f"digits 0-4 and model B on digits 5-9 ({epochs} epochs, Adam, seeds {', '.join(map(str, seeds))}); "
        "scikit-learn's 8x8 digits, fixed stratified split (1347 train / 450 test). Calibration: 674 unlabeled "
        "training images of both tasks (the statistics use all of them, the BatchNorm reset after every merge the "
        "first 512, the default). Joint accuracy: argmax over all ten classes; per-task: argmax inside the task's "
        "five classes. Mean ± std over seeds, in percent. zip uses alpha=0.5, beta=1.0; ot the exact solver "
        "(`ot.emd`) on activations, or on incoming weights (`cost=\"weights\"`).",
        "",
        table(runs),
        "",
        f"Command: `python -m bench accuracy`. Machine: {machine()}.",
    ])
    write_section("accuracy", text)
    return text
