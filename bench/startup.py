"""Startup time: ``import torch``, ``import hetsurgery`` and ``hetsurgery --help``, each in a fresh process.

The three commands alternate, round after round, so a busy machine slows all of them alike; the table
gives the median and the range over the rounds. hetsurgery's budget is ``import torch`` + 0.3 s: the
heavy optional packages (ONNX, onnxruntime, onnxscript, matplotlib, graphviz, scikit-learn, POT) are
imported where they are used.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.report import machine, write_section

ROUNDS = 9
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import hetsurgery": [sys.executable, "-c", "import hetsurgery"],
    "hetsurgery --help": [sys.executable, "-m", "hetsurgery", "--help"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Wall times of each command over ``rounds`` alternating rounds (after one warm-up round)."""
    for command in COMMANDS.values():  # warm the file cache
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    return times


def section(times: dict[str, list[float]]) -> str:
    torch_median = statistics.median(times["import torch"])
    rounds = len(times["import torch"])
    rows = [f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f} - {max(t):.2f} | "
            f"{statistics.median(t) - torch_median:+.2f} |" for name, t in times.items()]
    return "\n".join([
        "## Startup", "",
        f"Wall time of a fresh `python` process running each command (`python -c \"import torch\"`, "
        f"`python -c \"import hetsurgery\"`, `python -m hetsurgery --help`), the three alternating over {rounds} "
        "rounds after a warm-up round. Target: `import hetsurgery` and `--help` at most `import torch` + 0.3 s.", "",
        "| command | median (s) | range (s) | minus `import torch` (s) |", "|---|---|---|---|", *rows,
    ])


def main() -> str:
    print("startup", flush=True)
    text = section(measure()) + f"\n\nCommand: `python -m bench startup`. Machine: {machine()}."
    write_section("startup", text)
    return text
