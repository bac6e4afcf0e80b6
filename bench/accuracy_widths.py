"""Accuracy of merging models of different widths trained on disjoint digit tasks, mean ± std over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import hetsurgery as hs
from bench.accuracy import run_pairs, table
from bench.report import machine, write_section

METHODS = [("zip", "zip", {"width": "max"}), ("ot", "ot", {"width": "max"}),
           ("ot (weights)", "ot", {"width": "max", "cost": "weights"}),
           ("mal-pad", "mal-pad", {"width": "max"}), ("mal", "mal", {"width": "max"})]
PAIRS = [
    ("ResNet-20 x1 (task A) and ResNet-20 x2 (task B)", (lambda: hs.zoo.resnet20(1), lambda: hs.zoo.resnet20(2))),
    ("MLP 64-64 (task A) and MLP 128-96 (task B)", (lambda: hs.zoo.mlp([64, 64]), lambda: hs.zoo.mlp([128, 96]))),
]


def main(seeds: Sequence[int] = (0, 1, 2), epochs: int = 15) -> str:
    parts = ["## Merging models of different widths: digits 0-4 vs 5-9", "",
             "Model A (task A) and model B (task B) share a topology but not their widths. Every merge keeps the "
             "wider model's widths (`width=\"max\"`): zip is elastic neuron zipping (alpha=0.5, beta=1.0), ot "
             "transports the narrower model onto the wider one's neurons (by activations, or by incoming weights), mal-pad zero-pads the narrower model and "
             "solves one LAP per group, layer by layer, mal alternates LAPs from there until the objective stops "
             "improving (both on learned "
             "parameters, not BatchNorm statistics). Same data, "
             f"training ({epochs} epochs) and metrics as above; seeds {', '.join(map(str, seeds))}; BatchNorm "
             "statistics are recomputed on 512 calibration images after every merge.", ""]
    for title, factories in PAIRS:
        print(f"accuracy_widths: {title}", flush=True)
        runs = run_pairs(factories, seeds, METHODS, epochs)
        parts += [f"### {title}", "", table(runs), ""]
    parts.append(f"Command: `python -m bench accuracy_widths`. Machine: {machine()}.")
    text = "\n".join(parts)
    write_section("accuracy_widths", text)
    return text
