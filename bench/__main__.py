"""``python -m bench NAME [NAME ...]`` or ``python -m bench all`` (the names: ``RUNS``): run benchmarks, then rewrite BENCHMARKS.md."""

from __future__ import annotations

import sys

from bench import (
    accuracy,
    accuracy_widths,
    assembly,
    depth,
    hf_barrier,
    interiors,
    lift_time,
    ot_fusion,
    partial_zip,
    scale,
    speed,
    startup,
    three_models,
    trace_time,
)
from bench.report import assemble

RUNS = {"accuracy": accuracy.main, "accuracy_widths": accuracy_widths.main, "speed": speed.main,
        "scaling": speed.scaling_main, "startup": startup.main, "depth": depth.main,
        "depth_cost": depth.cost_main, "depth_resnet": depth.resnet_main, "ot_fusion": ot_fusion.main, "assembly": assembly.main,
        "three_models": three_models.main, "trace_time": trace_time.main, "partial_zip": partial_zip.main,
        "depth_interiors": interiors.main, "scale": scale.main, "depth_transformer": depth.transformer_main,
        "hf_barrier": hf_barrier.main, "lift_time": lift_time.main}


def main(argv: list[str]) -> int:
    names = argv or ["all"]
    chosen = list(RUNS) if names == ["all"] else names
    unknown = [n for n in chosen if n not in RUNS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}: choose from {', '.join(RUNS)} or all", file=sys.stderr)
        return 2
    for name in chosen:
        RUNS[name]()
    print(f"wrote {assemble()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
