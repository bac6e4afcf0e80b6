"""Run the command line with a pause at a named point, for a test to press Ctrl-C there.

``python interrupt_at.py POINT MARKER SECONDS -- ARGS...`` runs ``hetsurgery ARGS...`` as the program does.
When the run reaches POINT, the file MARKER is written and the process waits SECONDS (a test sends SIGINT
meanwhile), then the run goes on. POINT is

- ``MODULE:NAME``: before the first call of the function ``MODULE.NAME``;
- ``MODULE:NAME:inside``: just inside the first ``with`` of the context manager ``MODULE.NAME``;
- ``exit``: after the command has ended, while Python shuts down.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def pause(marker: str, seconds: float) -> None:
    pathlib.Path(marker).write_text("paused")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # a Ctrl-C lands in one of these short sleeps
        time.sleep(0.01)


def paused_call(real: Callable[..., Any], wait: Callable[[], None]) -> Callable[..., Any]:
    calls = []

    @functools.wraps(real)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            wait()
        return real(*args, **kwargs)

    return call


def paused_inside(real: Callable[..., Any], wait: Callable[[], None]) -> Callable[..., Any]:
    calls = []

    @contextlib.contextmanager
    def manager(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as value:
            if not calls:
                calls.append(1)
                wait()
            yield value

    return manager


def run(point: str, marker: str, seconds: float, argv: list[str]) -> int:
    wait = functools.partial(pause, marker, seconds)
    if point == "exit":
        atexit.register(wait)
    else:
        module, name, *where = point.split(":")
        owner = importlib.import_module(module)
        wrap = paused_inside if where == ["inside"] else paused_call
        setattr(owner, name, wrap(getattr(owner, name), wait))
    from hetsurgery.cli import main

    sys.argv = ["hetsurgery", *argv]
    return main()


if __name__ == "__main__":
    point, marker, seconds, dashes, *rest = sys.argv[1:]
    assert dashes == "--", "python interrupt_at.py POINT MARKER SECONDS -- ARGS..."
    sys.exit(run(point, marker, float(seconds), rest))
