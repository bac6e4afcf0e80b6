"""Measuring one run: wall time and peak resident memory (Linux VmHWM, reset through clear_refs)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")


def rss_kib(field: str = "VmRSS") -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM (the peak RSS) start again from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Run:
    seconds: float
    peak_mib: float
    detail: dict[str, Any]


def release() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so a run's peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: peaks then include earlier runs' freed memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(fn: Callable[[], dict[str, Any] | None]) -> Run:
    release()
    reset_peak()
    start = time.perf_counter()
    detail = fn() or {}
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM") / 1024
    release()
    return Run(seconds, peak, detail)


def median(runs: list[Run]) -> Run:
    """The run with the median wall time (its memory and stage breakdown come with it)."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    mid = ordered[len(ordered) // 2]
    return Run(statistics.median(r.seconds for r in runs), max(r.peak_mib for r in runs), mid.detail)
