"""Assemble BENCHMARKS.md from the sections each benchmark writes under bench/results/."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ORDER = [  # the sections of BENCHMARKS.md, in order: one name per line
    "accuracy",
    "accuracy_widths",
    "depth",
    "depth_resnet",
    "depth_transformer",
    "hf_barrier",
    "depth_cost",
    "depth_interiors",
    "ot_fusion",
    "partial_zip",
    "three_models",
    "assembly",
    "speed",
    "scaling",
    "trace_time",
    "lift_time",
    "scale",
    "startup",
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    # the code that ran: the package and the harness, not the results this run is writing
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "hetsurgery", "bench",
                            ":(exclude)bench/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = commit.strip() + (" plus uncommitted changes" if dirty else "")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; commit {commit or 'unknown'}")


def write_section(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text.rstrip() + "\n")
    tmp.replace(path)
    return path


def assemble() -> Path:
    parts = ["# Benchmarks", "", "Measured numbers only: every table says the command that produced it and the "
             "machine it ran on. Regenerate everything with `make bench` (or `python -m bench all`).", ""]
    for name in ORDER:
        path = RESULTS / f"{name}.md"
        if path.exists():
            parts += [path.read_text().rstrip(), ""]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts))
    return out
