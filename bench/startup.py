"""Startup time: ``import torch``, ``import hetsurgery`` and ``hetsurgery --help``, each in a fresh process.

The three commands alternate, round after round, so a busy machine slows all of them alike; the table
gives the median and the range of the wall time over the rounds, and the median CPU time (user + system)
of the process, which other work on the machine disturbs much less. hetsurgery's budget is ``import torch`` + 0.3 s: the
heavy optional packages (ONNX, onnxruntime, onnxscript, matplotlib, graphviz, scikit-learn, POT) are
imported where they are used.
"""

from __future__ import annotations

import resource
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


def seconds(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(rounds: int = ROUNDS) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each command over ``rounds`` alternating rounds (after one warm-up round)."""
    for command in COMMANDS.values():  # warm the file cache
        seconds(command)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    return times


def section(times: dict[str, list[tuple[float, float]]]) -> str:
    def median(name: str, i: int) -> float:
        return statistics.median(t[i] for t in times[name])

    rounds = len(times["import torch"])
    rows = [f"| `{name}` | {median(name, 0):.2f} | {min(w for w, _ in t):.2f} - {max(w for w, _ in t):.2f} | "
            f"{median(name, 0) - median('import torch', 0):+.2f} | {median(name, 1):.2f} | "
            f"{median(name, 1) - median('import torch', 1):+.2f} |" for name, t in times.items()]
    return "\n".join([
        "## Startup", "",
        f"Wall time of a fresh `python` process running each command (`python -c \"import torch\"`, "
        f"`python -c \"import hetsurgery\"`, `python -m hetsurgery --help`), the three alternating over {rounds} "
        "rounds after a warm-up round. Target: `import hetsurgery` and `--help` at most `import torch` + 0.3 s.", "",
        "| command | wall median (s) | wall range (s) | wall minus `import torch` (s) | CPU median (s) | "
        "CPU minus `import torch` (s) |", "|---|---|---|---|---|---|", *rows,
    ])


def main() -> str:
    print("startup", flush=True)
    text = section(measure()) + f"\n\nCommand: `python -m bench startup`. Machine: {machine()}."
    write_section("startup", text)
    return text
