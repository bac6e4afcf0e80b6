"""``hetsurgery assemble CONFIG.yaml -o OUT``: a package whose plan.json keeps the assembly record, per-donor
units and λ, depth-heterogeneous donors, the template of every key, and bad input that exits 2 and writes
nothing."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml
from pydantic import BaseModel

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.config import AssemblyConfig
from hetsurgery.config.assembly_run import EXAMPLE_HEADER
from hetsurgery.config.example import example_config
from hetsurgery.config.load import read_config
from hetsurgery.config.problems import model_in
from hetsurgery.export import read_assembly

MODELS = {"base.safetensors": [16, 16], "wide.pt": [24, 20], "deep.safetensors": [12, 12, 12]}


def _world(folder: pathlib.Path, **changes: Any) -> pathlib.Path:
    """Weights for a base and two donors, and a config that assembles them (``changes`` edit it)."""
    torch.manual_seed(0)
    for name, hidden in MODELS.items():
        state = hs.zoo.mlp(hidden).state_dict()
        if name.endswith(".pt"):
            torch.save(state, folder / name)
        else:
            safetensors.torch.save_file(state, str(folder / name))
    cfg: dict[str, Any] = {
        "base": {"factory": "mlp", "kwargs": {"hidden": [16, 16]}, "weights": "base.safetensors", "name": "B"},
        "donors": [{"factory": "mlp", "kwargs": {"hidden": [24, 20]}, "weights": "wide.pt", "name": "wide",
                    "layers": ["layers_0", "layers_2"], "lam": {"layers_0": 0.2, "layers_2": 0.4}},
                   {"factory": "mlp", "kwargs": {"hidden": [12, 12, 12]}, "weights": "deep.safetensors"}],
        "input_shape": [1, 8, 8], "calibration": {"every": 8}, "depth": {"method": "lma"}, "lam": 0.1,
        "evaluate": {"every": 4, "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    }
    for key, value in changes.items():
        where, _, leaf = key.rpartition(".")
        holder: Any = cfg
        for part in where.split(".") if where else []:
            holder = holder[int(part) if part.isdigit() else part]
        holder[int(leaf) if leaf.isdigit() else leaf] = value
    path = folder / "assemble.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_an_assembly_from_the_command_line_writes_a_package_with_its_record(tmp_path: pathlib.Path,
                                                                            capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    out = tmp_path / "assembled"
    assert main(["assemble", str(_world(tmp_path)), "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| B |" in printed and "| wide |" in printed and "| donors.1 |" in printed and "| assembled |" in printed
    assert f"package: {out}" in printed
    record = read_assembly(out)
    assert record is not None
    assert [(u["donor"], u["unit"], u["lam"]) for u in record["units"]] == [
        (0, "layers_0", 0.2), (0, "layers_2", 0.4), (1, "layers_0", 0.1), (1, "layers_2", 0.1), (1, "layers_4", 0.1)]
    assert record["donors"][1]["depth"]["models"][0]["stages"][0]["balance"] == "merge"
    assert [u["size_compatible"] for u in record["units"][:2]] == [False, False]
    assert json.loads((out / "plan.json").read_text())["width"] is None
    assert "hetsurgery assemble assemble.yaml" in (out / "report.md").read_text()
    assert hs.export.load(out)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("changes", "says"), [
    ({"donors.0.layers": ["layers_1"]}, "wide: layers names 'layers_1', which is not a unit of the base"),
    ({"lam": 1.5}, "lam: must be a number in [0, 1] or {unit key: number in [0, 1]}, not 1.5"),
    ({"donors.0.lam": -0.2}, "donors.0.lam: must be a number in [0, 1]"),
    ({"donors.1.kwargs": {"hidden": [12], "num_classes": 5}, "donors.1.weights": None},
     "outputs (2, 5) on the base's inputs"),
    ({"donors.1.kwargs": {"hidden": [12], "in_features": 32}, "donors.1.weights": None},
     "donors.1 (mlp) does not run on inputs of shape"),
    ({"depth": None}, "donors.1 differs in depth from B (stage0: 2 layers in B, 3 in donors.1)"),
    ({"align": {"method": "permute"}}, "needs equal widths for this method"),
    ({"align": {"options": {"sweeps": 3}}}, "align: method 'mal' takes no option 'sweeps'"),
    ({"donors.0.layer": "all"}, "donors.0.layer: unknown key (a typo?)"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: pathlib.Path, changes: dict, says: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["assemble", str(_world(tmp_path, **changes)), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetsurgery assemble: ") and says in err, err
    assert not out.exists()


def test_an_output_over_an_input_is_refused(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assemble", str(_world(tmp_path)), "-o", str(tmp_path), "--quiet"]) == 2
    assert "contains" in capsys.readouterr().err and (tmp_path / "base.safetensors").exists()
    assert main(["assemble", "--quiet"]) == 2
    assert "give CONFIG.yaml and -o OUT" in capsys.readouterr().err


def _keys(cls: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in cls.model_fields.items():
        out.add(name)
        sub = model_in(field.annotation)
        if sub is not None:
            out |= _keys(sub)
    return out


def test_the_example_config_documents_every_key_and_runs(tmp_path: pathlib.Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assemble", "--example-config"]) == 0
    template = capsys.readouterr().out
    assert template == example_config(AssemblyConfig, EXAMPLE_HEADER)
    written = {line.strip().removeprefix("# ").removeprefix("- ").split(":")[0] for line in template.splitlines()}
    assert _keys(AssemblyConfig) <= written
    (tmp_path / "assemble.yaml").write_text(template)
    cfg = read_config(tmp_path / "assemble.yaml", AssemblyConfig, "assemble")
    assert cfg.donors[0].lam == 0.2 and cfg.depth is None and cfg.align.options == {"max_sweeps": 100}
    torch.manual_seed(0)
    safetensors.torch.save_file(hs.zoo.mlp([64, 64]).state_dict(), str(tmp_path / "base.safetensors"))
    torch.save(hs.zoo.mlp([128, 96]).state_dict(), tmp_path / "wide.pt")
    safetensors.torch.save_file(hs.zoo.mlp([48, 32]).state_dict(), str(tmp_path / "narrow.safetensors"))
    assert main(["assemble", str(tmp_path / "assemble.yaml"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert read_assembly(tmp_path / "out") is not None


def test_assemble_describes_itself_and_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["assemble", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: hetsurgery assemble") and "Model Assembly Learning" in text
    assert "exit codes: 0 success; 1 " in text and "a λ outside [0, 1]" in text and "130 interrupted" in text
