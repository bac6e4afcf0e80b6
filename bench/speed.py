"""Speed and memory: weight matching against rebasin, activation merges against their floor, scaling.

Every configuration runs in its own process (``bench.worker``) that alternates its contenders, drops a
warm-up round and reports medians; peak memory is the process's peak RSS during each run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

from bench.report import RESULTS, machine, write_section

REPEATS = 3


def run(spec: dict[str, Any]) -> dict[str, Any]:
    print(f"  {json.dumps(spec)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker failed for {spec}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "raw.jsonl").open("a") as f:
        f.write(json.dumps({"spec": spec, "result": result}) + "\n")
    return result


def over(r: dict[str, Any], peak: float) -> float:
    """Peak memory above the warmed-up baseline, in multiples of the two models' parameter bytes."""
    return (peak - r["baseline_mib"]) / r["params_mib"]


def stages(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in s.items() if v >= 0.005)


def weight_section(widths: list[int]) -> str:
    rows = []
    for w in widths:
        r = run({"kind": "weight", "width": w, "repeats": REPEATS})
        h, b = r["hetsurgery"], r["rebasin"]
        rows.append(f"| x{w} | {r['parameters'] / 1e6:.1f} M | {h['seconds']:.2f} | {b['seconds']:.2f} | "
                    f"**{h['seconds'] / b['seconds']:.2f}** | {over(r, h['peak_mib']):.2f} | {over(r, b['peak_mib']):.2f} | "
                    f"{h['error']:.1e} | {b['error']:.1e} | {stages(h['stages'])} |")
    return "\n".join([
        "## Weight matching: hetsurgery vs rebasin 0.0.47",
        "",
        "Merge two independently initialised CIFAR-style ResNet-20s (3x32x32 inputs, 1x1-conv shortcuts; written "
        "for the benchmark independently of the zoo, `bench/independent_resnet.py`) by Git "
        "Re-Basin weight matching and average them. hetsurgery: `merge(method=\"weight\")`; rebasin: "
        "`PermutationCoordinateDescent(a, b, x).rebasin()` then averaging the state dicts. Times are medians of "
        f"{REPEATS} runs after a warm-up round, the two tools alternating in one process per width. Memory: peak RSS "
        "during the run above the warmed-up process (interpreter, imports, one tiny merge of each tool), in multiples "
        "of the two models' parameter bytes; the two input models themselves count (1.0). Error: a model with "
        "randomised BatchNorm statistics merged with a randomly permuted copy of itself, relative max-abs output "
        "error (0 = exact; rebasin does not permute BatchNorm running statistics).",
        "",
        "| width | parameters | hetsurgery (s) | rebasin (s) | ratio | hetsurgery memory | rebasin memory | "
        "hetsurgery error | rebasin error | hetsurgery stages (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Targets: ratio ≤ 0.25 at x4, x8 and x16 (issue 21; earlier 0.5); memory ≤ 2.5.",
    ])


def activation_section(widths: list[int], samples: int, methods: tuple[str, ...] = ("permute", "zip")) -> str:
    rows = []
    for width in widths:
        r = run({"kind": "activation", "width": width, "samples": samples, "methods": list(methods),
                 "repeats": REPEATS})
        gemm = r["gram"]["stages"]["gemm"]
        bare = r["forward"]["seconds"] + r["lap"]["seconds"]
        floor = bare + gemm
        rows += [f"| x{width} | floor: forward passes of both models | {r['forward']['seconds']:.2f} | | | "
                 f"{over(r, r['forward']['peak_mib']):.2f} | |",
                 f"| x{width} | floor: one Gram GEMM per group and batch, alone | {gemm:.2f} | | | | |",
                 f"| x{width} | floor: bare linear_sum_assignment calls | {r['lap']['seconds']:.3f} | | | | |"]
        for m in methods:
            rows.append(f"| x{width} | {m} | {r[m]['seconds']:.2f} | **{r[m]['seconds'] / floor:.2f}** | "
                        f"{r[m]['seconds'] / bare:.2f} | {over(r, r[m]['peak_mib']):.2f} | {stages(r[m]['stages'])} |")
    return "\n".join([
        "## Activation-based merges against the floor",
        "",
        f"Two ResNet-20s (the zoo's) of each width, {samples} calibration images of 3x32x32 in batches of 128. The "
        "honest floor (issue 21) is what any correlation merge must do, each part measured in the same process: "
        "run both models over the calibration set (no grad, eval mode); per batch, one Gram GEMM per permutable "
        "group between the two models' features at the group's first site (float32, summed in float64; "
        "`bench.worker.gram_floor`, the GEMMs timed alone); solve the assignment problems (the same correlation "
        "matrices `permute` solves). The ratio to the forward passes and LAPs alone is reported beside it. A merge's total includes tracing, statistics, matching, "
        "combining and the BatchNorm reset (on 512 calibration images by default; see the accuracy section for "
        f"its effect). Medians of {REPEATS} runs, contenders alternating in one process. Memory as above "
        "(multiples of parameter bytes; here activations dominate, so compare with the floor's own row).",
        "",
        "| width | run | seconds | total / honest floor | total / forward floor | memory | stages (s) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Target (issue 21): total / honest floor ≤ 1.2 at x1, x2 and x4 for permute and zip, BatchNorm reset "
        "included.",
    ])


def scaling_section(widths: list[int], samples: list[int], fixed_samples: int, fixed_width: int) -> str:
    by_width = [run({"kind": "scaling", "method": "zip", "width": w, "samples": fixed_samples, "repeats": 1})
                for w in widths]
    by_samples = [run({"kind": "scaling", "method": "zip", "width": fixed_width, "samples": n, "repeats": 1})
                  for n in samples]
    plot = _plot(by_width, by_samples)
    slope_p = _slope([r["parameters"] for r in by_width], [r["zip"]["seconds"] for r in by_width])
    slope_n = _slope([r["samples"] for r in by_samples], [r["zip"]["seconds"] for r in by_samples])
    rows_w = [f"| x{r['width']} | {r['parameters'] / 1e6:.2f} M | {r['zip']['seconds']:.2f} | "
              f"{r['forward']['seconds']:.2f} | {r['zip']['peak_mib']:.0f} | {stages(r['zip']['stages'])} |"
              for r in by_width]
    rows_n = [f"| {r['samples']} | {r['zip']['seconds']:.2f} | {r['forward']['seconds']:.2f} | "
              f"{r['zip']['peak_mib']:.0f} | {stages(r['zip']['stages'])} |" for r in by_samples]
    return "\n".join([
        "## Scaling",
        "",
        f"`zip` merges of two ResNet-20s, one run per point after a warm-up. Against parameters: widths "
        f"x{', x'.join(map(str, widths))} at {fixed_samples} calibration images; against calibration size: "
        f"x{fixed_width} at {', '.join(map(str, samples))} images. Peak memory is the process's peak RSS (MiB).",
        "",
        "| width | parameters | zip (s) | forward floor (s) | peak MiB | stages (s) |",
        "|---|---|---|---|---|---|",
        *rows_w,
        "",
        "| images | zip (s) | forward floor (s) | peak MiB | stages (s) |",
        "|---|---|---|---|---|",
        *rows_n,
        "",
        f"Log-log slopes: time against parameters **{slope_p:.2f}**, against calibration images **{slope_n:.2f}** "
        "(target: no worse than linear in parameters, slope ≤ 1).",
        "",
        f"![scaling]({plot})",
    ])


def hetero_section(pairs: list[str]) -> str:
    methods = ["zip", "ot", "mal-pad", "mal"]
    rows = []
    for pair in pairs:
        r = run({"kind": "hetero", "pair": pair, "methods": methods, "repeats": REPEATS})
        for m in methods:
            rows.append(f"| {pair} | {m} | {r[m]['seconds']:.3f} | {over(r, r[m]['peak_mib']):.1f} | "
                        f"{stages(r[m]['stages'])} |")
    return "\n".join([
        "## Width-heterogeneous merges at the tutorials' sizes",
        "",
        "Untrained models (timing does not depend on training), digits-shaped inputs, 674 calibration images, "
        f"`width=\"max\"`; medians of {REPEATS} runs. Memory in multiples of the two models' parameter bytes "
        "(small models: fixed per-run costs dominate).",
        "",
        "| pair | method | seconds | memory | stages (s) |",
        "|---|---|---|---|---|",
        *rows,
    ])


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def _plot(by_width: list[dict[str, Any]], by_samples: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [r["parameters"] for r in by_width]
    axes[0].loglog(xs, [r["zip"]["seconds"] for r in by_width], "o-", label="zip merge")
    axes[0].loglog(xs, [r["forward"]["seconds"] for r in by_width], "s--", label="forward floor")
    axes[0].loglog(xs, [r["zip"]["peak_mib"] / 1024 for r in by_width], "^:", label="peak RSS (GiB)")
    axes[0].set(xlabel="parameters per model", ylabel="seconds / GiB", title="against parameters")
    ns = [r["samples"] for r in by_samples]
    axes[1].loglog(ns, [r["zip"]["seconds"] for r in by_samples], "o-", label="zip merge")
    axes[1].loglog(ns, [r["forward"]["seconds"] for r in by_samples], "s--", label="forward floor")
    axes[1].set(xlabel="calibration images", title="against calibration size")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    out = RESULTS / "scaling.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return "bench/results/scaling.png"


def main() -> str:
    print("speed: weight matching", flush=True)
    parts = [weight_section([1, 4, 8, 16])]
    print("speed: activation merges", flush=True)
    parts.append(activation_section([1, 2, 4], 2048))
    print("speed: width-heterogeneous merges", flush=True)
    parts.append(hetero_section(["mlp 64-64 / 128-96", "resnet20 x1 / x2"]))
    parts.append(f"Command: `python -m bench speed`. Machine: {machine()}.")
    text = "\n\n".join(parts)
    write_section("speed", text)
    return text


def scaling_main() -> str:
    print("scaling", flush=True)
    text = scaling_section([1, 2, 4, 8, 16], [256, 512, 1024, 2048, 4096, 8192], fixed_samples=256, fixed_width=1)
    text += f"\n\nCommand: `python -m bench scaling`. Machine: {machine()}."
    write_section("scaling", text)
    return text
