"""The command line and the tutorials, run as a user would run them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from hetsurgery.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_inspect_prints_summary_and_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--kw", "width=2"]) == 0
    out = capsys.readouterr().out
    assert "ModelGraph resnet20: 13 groups, 12 permutable, coverage 1.000" in out
    assert "[frozen: model output]" in out


def test_inspect_module_factory_with_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "hetsurgery.zoo:mlp", "--kw", "hidden=[16, 8]", "--input-shape", "64"]) == 0
    assert "3 groups, 2 permutable" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["inspect", "nosuch"], ["inspect", "mlp", "--kw", "oops"],
                                  ["inspect", "mlp", "--input-shape", "a,b"], ["inspect", "mlp", "--kw", "bad=1"]])
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("hetsurgery inspect:")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "tutorials").glob("*.py")))
def test_tutorial_runs(script: str, tmp_path: pathlib.Path) -> None:
    """Run from an empty folder: a tutorial writes its files into a temporary folder of its own, never into the
    folder it is run from (tutorial-04-out/ was once committed at the repository's root)."""
    done = subprocess.run([sys.executable, str(ROOT / "tutorials" / script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
