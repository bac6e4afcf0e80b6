"""`hetsurgery inspect PKG | head -3`: a reader that closes the pipe early ends any command quietly (exit 1, as
Python's documentation recommends), with no "[Errno 32] Broken pipe" and no traceback."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import save

ROOT = pathlib.Path(__file__).resolve().parents[1]


class ClosedPipe(io.StringIO):
    """A stdout whose reader has gone: every write and flush fails as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_inspect_quietly(tmp_path: pathlib.Path) -> None:
    package = save(hs.trace(hs.zoo.mlp([16]), torch.randn(2, 1, 8, 8)), tmp_path / "pkg")
    proc = subprocess.Popen([sys.executable, "-m", "hetsurgery", "inspect", str(package)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command prints
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.decode()) == (1, "")


@pytest.mark.parametrize("argv", [["--help"], ["merge", "--example-config"], ["assemble", "--example-config"],
                                  ["inspect", "mlp"], ["render", "mlp", "-o", "OUT/g.svg", "--quiet"]])
def test_every_command_ends_quietly_on_a_closed_pipe(argv: list[str], tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(argv) == 1
    assert capsys.readouterr().err == ""
    if argv[0] == "render":
        assert (tmp_path / "g.svg").is_file()  # the picture was written before the report was cut off
