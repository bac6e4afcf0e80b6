"""Lift time as the graph grows: how ``lift_graph`` (shapes, channel rules, groups, units) scales with node count.

Two families from the zoo, traced with torch.fx once per size: a pre-LN transformer stack (``zoo.transformer``,
manual attention, width 32, 4 heads) of 2 to 64 blocks, and a ResNet (``zoo.resnet``, ``n`` basic blocks in each of
three stages: ``6 n + 2`` layers) of 8 to 200 layers. ``lift_graph`` is timed on a structural copy of the traced
graph (it owns what it lifts), the median of three runs. The slope is the least-squares fit of
``log(lift seconds)`` against ``log(nodes)`` over the sizes: 1 is linear growth.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn

import hetsurgery as hs
from bench.report import machine, write_section
from hetsurgery.tracing.lift import lift_graph, structural_copy

ROUNDS = 3
BLOCKS = (2, 4, 8, 16, 32, 64)
RESNET_N = (1, 2, 4, 8, 16, 33)  # 8, 14, 26, 50, 98, 200 layers


def lift_seconds(model: nn.Module, x: torch.Tensor) -> tuple[int, float]:
    """Node count of the traced graph and the median time of lifting it."""
    g = hs.trace(model.eval(), x)
    gm = g.module
    times = []
    for _ in range(ROUNDS):
        copy = structural_copy(gm)
        assert isinstance(copy, fx.GraphModule)
        start = time.perf_counter()
        lift_graph(copy, g.example_inputs, g.name)
        times.append(time.perf_counter() - start)
    return len(gm.graph.nodes), statistics.median(times)


def slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of ``log t`` against ``log n``."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def family(name: str, sizes: Sequence[int], build: Callable[[int], nn.Module], size_text: Callable[[int], str],
           x: torch.Tensor) -> tuple[list[str], float, list[tuple[int, float]]]:
    rows, points = [], []
    for n in sizes:
        torch.manual_seed(0)
        nodes, seconds = lift_seconds(build(n), x)
        points.append((nodes, seconds))
        rows.append(f"| {name} | {size_text(n)} | {nodes} | {seconds:.3f} | {1e3 * seconds / nodes:.2f} |")
        print(f"  {name} {size_text(n)}: {nodes} nodes, {seconds:.3f}s", flush=True)
    return rows, slope(points), points


def main() -> str:
    print("lift_time", flush=True)
    x = torch.randn(2, 1, 8, 8)
    t_rows, t_slope, t_points = family("transformer (pre-LN, width 32)", BLOCKS,
                                       lambda n: hs.zoo.transformer("manual", depth=n), lambda n: f"{n} blocks", x)
    r_rows, r_slope, _ = family("ResNet (basic blocks, widths 16/32/64)", RESNET_N,
                                lambda n: hs.zoo.resnet((n, n, n)), lambda n: f"{6 * n + 2} layers", x)
    largest = t_points[-1][1]
    lines = ["## Lift time as the graph grows", "",
             "`lift_graph` (shape propagation, channel rules, groups, units and stages) on torch.fx graphs of growing "
             f"models, the median of {ROUNDS} runs each; slope: least-squares fit of log(lift time) against "
             "log(node count), 1 being linear growth.", "",
             "| model | size | nodes | lift (s) | ms per node |", "|---|---|---|---|---|", *t_rows, *r_rows, "",
             f"Slope: transformer stack {t_slope:.2f}, ResNet {r_slope:.2f} (target ≤ 1.1). The 64-block transformer "
             f"stack lifts in {largest:.2f} s (target < 10 s).", "",
             f"Command: `python -m bench lift_time`. Machine: {machine()}."]
    text = "\n".join(lines)
    write_section("lift_time", text)
    return text
