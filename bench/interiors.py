"""The inserted blocks' interiors: the deeper model's own (``hetsurgery.merging.inserted``) against zipped like any
other unit's (as before it), on the same models, with every depth method.

The models are the depth section's (model A deep on digits 0-4, model B shallow on 5-9, and a deep B for the
homogeneous reference), over more seeds than its table: the effect is small against the spread between seeds, so
the table gives the paired difference (after minus before) per depth method, mean ± standard error over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from unittest import mock

import torch

import hetsurgery as hs
from bench.accuracy import train_pair_two
from bench.depth import DEPTHS, PAIRS
from bench.report import machine, write_section
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import task_scores
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

ABLATED = ("ResNet-32 / ResNet-20", "ResNet (3, 3) / (2, 1) blocks per stage")
ZIPPED = "hetsurgery.merging.driver.real_interiors"  # replaced by none: the width method's match stands


def _joint(a: torch.nn.Module, b: torch.nn.Module, calib: object, depth: str | None) -> float:
    merged = hs.merge([a, b], calib, method="zip", depth=depth, progress=False).model
    return task_scores(merged, loader(digits("test")), TASKS).joint


def measure(pair: str, seeds: Sequence[int], epochs: int) -> dict[str, list[float]]:
    """Joint accuracy per seed: homogeneous zip, and every depth method with the interiors alone and zipped."""
    deep, shallow, _ = PAIRS[pair]
    calib = loader(calibration_set(), 128)
    out: dict[str, list[float]] = {}
    for seed in seeds:
        a, b = train_pair_two((deep, shallow), epochs, seed)
        torch.manual_seed(1000 * seed + 1)  # the depth section's deep B
        b_deep = train(deep(), digits("train", TASKS[1]), epochs=epochs, seed=1000 * seed + 1)
        out.setdefault("homogeneous", []).append(_joint(a, b_deep, calib, None))
        for depth in DEPTHS:
            out.setdefault(f"{depth} alone", []).append(_joint(a, b, calib, depth))
            with mock.patch(ZIPPED, lambda graphs, depth: {}):
                out.setdefault(f"{depth} zipped", []).append(_joint(a, b, calib, depth))
        print(f"  interiors {pair} seed {seed}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in out.items()), flush=True)
    return out


def _mean_se(values: Sequence[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):+.1f} ± {100 * se:.1f}"


def table(pair: str, runs: dict[str, list[float]]) -> list[str]:
    def mean(key: str) -> str:
        return f"{100 * statistics.mean(runs[key]):.1f}"

    rows = [f"### {pair}", "", "| depth method | interiors zipped (before) | interiors alone (now) | "
            "paired difference | seeds better / worse | now minus homogeneous zip |", "|---|---|---|---|---|---|"]
    for depth in DEPTHS:
        now, before = runs[f"{depth} alone"], runs[f"{depth} zipped"]
        diffs = [x - y for x, y in zip(now, before, strict=True)]
        gap = [x - y for x, y in zip(now, runs["homogeneous"], strict=True)]
        rows.append(f"| {depth.upper()} | {mean(f'{depth} zipped')} | {mean(f'{depth} alone')} | {_mean_se(diffs)} | "
                    f"{sum(d > 0 for d in diffs)} / {sum(d < 0 for d in diffs)} | {_mean_se(gap)} |")
    rows += ["", f"Homogeneous zip (A + deep B): {mean('homogeneous')}."]
    return rows


def main(seeds: Sequence[int] = tuple(range(6)), epochs: int = 15) -> str:
    print("depth: the inserted blocks' interiors", flush=True)
    parts = ["### (d) Inside an inserted block: the deeper model's own, or zipped with the inserted copy", "",
             "A zero-residual block inserted into the shallower model B is a copy of a neighbour block (or, in a stage "
             "of one strided block, derived from it with fresh input layers) whose last BatchNorm is zero. Before, its "
             "inner channels were zipped with the deeper model A's block at that place like any other unit's, so "
             "half of every inner layer of the merged block came from the copy; now (`hetsurgery.merging.inserted`, "
             "Xu et al.'s eq. 2, W* = P_A W_A + P_B 0) the block's inner groups are A's alone, and only its output is "
             "weighed as the stream is. Joint accuracy (%) of `merge([A, B], method=\"zip\", depth=...)`, both ways "
             f"on the same models (the depth section's recipe, seeds {', '.join(map(str, seeds))}); differences in "
             "points, mean ± standard error over seeds.", ""]
    for pair in ABLATED:
        parts += [*table(pair, measure(pair, seeds, epochs)), ""]
    parts += [f"Command: `python -m bench depth_interiors`. Machine: {machine()}."]
    text = "\n".join(parts)
    write_section("depth_interiors", text)
    return text
