"""`hetsurgery --version`, every command's `--help` (a description and the exit codes), and
`hetsurgery merge --example-config`: a template of every key that the real schema loads and merges."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from importlib.metadata import version

import pytest
import safetensors.torch
import torch
from pydantic import BaseModel

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.config import MergeConfig, load_config
from hetsurgery.config.problems import model_in

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("inspect", "merge", "export", "render", "demo")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hetsurgery", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def test_version_and_help_in_a_fresh_process() -> None:
    done = _run("--version")
    assert (done.returncode, done.stdout) == (0, f"hetsurgery {version('hetsurgery')}\n")
    done = _run("--help")
    assert done.returncode == 0 and "exit codes: 0 success; 1" in done.stdout
    assert all(command in done.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_describes_itself_and_its_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: hetsurgery {command}")
    assert "exit codes: 0 success; 1 " in text and "2 bad input (" in text and "130 interrupted" in text


def _keys(cls: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in cls.model_fields.items():
        out.add(name)
        sub = model_in(field.annotation)
        if sub is not None:
            out |= _keys(sub)
    return out


def test_the_example_config_documents_every_key_and_merges(tmp_path: pathlib.Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["merge", "--example-config"]) == 0
    template = capsys.readouterr().out
    written = {line.strip().removeprefix("# ").removeprefix("- ").split(":")[0] for line in template.splitlines()}
    assert _keys(MergeConfig) <= written
    assert "# (required) one example's shape, without the batch dimension\ninput_shape: [1, 8, 8]" in template

    (tmp_path / "merge.yaml").write_text(template)
    cfg = load_config(tmp_path / "merge.yaml")  # the real schema, on the template as printed
    assert [m.weights for m in cfg.models] == [pathlib.Path("a.safetensors"), pathlib.Path("b.pt")]
    assert cfg.evaluate is None and cfg.width.target is None and cfg.calibration.every == 2

    # its optional evaluate section, switched on by removing the '#' before its keys
    lines, on = [], False
    for line in template.splitlines():
        if line.startswith("# evaluate:"):
            on = True
        elif on and not line.startswith("  "):
            on = False
        key = line.strip().removeprefix("# ").split(":")[0]
        lines.append(line.replace("# ", "", 1) if on and key in ("evaluate", "dataset", "tasks") else line)
    (tmp_path / "merge.yaml").write_text("\n".join(lines))
    assert load_config(tmp_path / "merge.yaml").evaluate.tasks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]

    # the weights it names, written as the template's header says, and the merge runs
    torch.manual_seed(0)
    safetensors.torch.save_file(hs.zoo.mlp([64, 64]).state_dict(), str(tmp_path / "a.safetensors"))
    torch.save(hs.zoo.mlp([128, 96]).state_dict(), tmp_path / "b.pt")
    assert main(["merge", str(tmp_path / "merge.yaml"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "| merged |" in capsys.readouterr().out


def test_merge_needs_a_config_and_an_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["merge", "--quiet"]) == 2
    assert capsys.readouterr().err == ("hetsurgery merge: give CONFIG.yaml and -o OUT (or --example-config for a "
                                       "template)\n")
