"""`hetsurgery merge CONFIG.yaml -o OUT`, `export`, `render`, `inspect` on a package, and `demo`'s ending:
bad input exits 2 with a message naming the problem and leaves no output folder; a failed merge exits 1."""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch
import yaml

import hetsurgery as hs
import hetsurgery.demo
from hetsurgery.cli import main
from hetsurgery.export import load

CONFIG = {
    "models": [
        {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [32, 32]}, "weights": "a.safetensors", "name": "A"},
        {"factory": "mlp", "kwargs": {"hidden": [48, 24]}, "weights": "b.pt", "name": "B"},
    ],
    "input_shape": [1, 8, 8],
    "calibration": {"dataset": "digits", "every": 4},
    "width": {"method": "zip", "options": {"alpha": 0.5}, "target": "max"},
    "evaluate": {"dataset": "digits", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    "seed": 0,
}


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    torch.manual_seed(0)
    safetensors.torch.save_file(hs.zoo.mlp([32, 32]).state_dict(), str(tmp_path / "a.safetensors"))
    b = hs.zoo.mlp([48, 24])
    torch.save(b.state_dict(), tmp_path / "b.pt")
    torch.save(b, tmp_path / "whole.pt")  # a pickled module: must be refused
    return tmp_path


def _write(folder: pathlib.Path, config: dict, name: str = "merge.yaml") -> pathlib.Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "out")


def test_merge_export_render_inspect_a_package(workdir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert main(["merge", str(_write(workdir, CONFIG)), "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "merge method=zip" in printed and f"package: {out}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["model.py", "model.safetensors", "plan.json", "report.md"]
    report = (out / "report.md").read_text()
    assert "| A | `hetsurgery.zoo:mlp` |" in report and "| merged |" in report and "| 0 | 32 / 48 | 48 | zip |" in report
    model = load(out)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)

    assert main(["export", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "batch sizes 2, 5" in printed and "passed" in printed and f"onnx: {out / 'model.onnx'}" in printed

    assert main(["render", str(out), "--group", "0", "--names", "A,B"]) == 0
    assert main(["render", str(out), "-o", str(workdir / "graph.svg")]) == 0
    for svg in (out / "plan-group-0.svg", workdir / "graph.svg"):
        assert ET.parse(svg).getroot().tag.endswith("svg")
    assert main(["inspect", str(out)]) == 0
    assert "3 groups, 2 permutable" in capsys.readouterr().out


def _typo(c: dict) -> None:
    c["models"][0]["weigths"] = c["models"][0].pop("weights")


def _missing(c: dict) -> None:
    c["models"][1]["weights"] = "nothere.pt"


def _shape(c: dict) -> None:
    c["input_shape"] = [3, 32, 32]


def _pickled(c: dict) -> None:
    c["models"][1]["weights"] = "whole.pt"


def _option(c: dict) -> None:
    c["width"]["options"] = {"alpah": 0.3}


BAD = {
    "unknown key": (_typo, "models.0.weigths: unknown key (a typo?); the keys here are factory, kwargs, weights, name"),
    "missing file": (_missing, "nothere.pt does not exist"),
    "wrong input shape": (_shape, "does not run on inputs of shape (2, 3, 32, 32)"),
    "pickled module": (_pickled, "holds pickled Python objects"),
    "unknown option": (_option, "width.options.alpah: zip takes no option 'alpah'; it takes alpha, beta"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(case: str, workdir: pathlib.Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    edit, message = BAD[case]
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    edit(config)
    code = main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hetsurgery merge:") and message in err
    assert case != "missing file" or "models.1 (B): weights file" in err
    assert _leftovers(workdir) == []


def test_a_failed_merge_exits_1_and_writes_nothing(workdir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["width"] = {"method": "permute"}  # permute needs equal widths; these differ
    assert main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"]) == 1
    assert "hetsurgery merge:" in capsys.readouterr().err
    assert _leftovers(workdir) == []


def test_an_occupied_output_folder_is_refused(workdir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "out").mkdir()
    (workdir / "out" / "notes.txt").write_text("mine")
    assert main(["merge", str(_write(workdir, CONFIG)), "-o", str(workdir / "out"), "--quiet"]) == 2
    assert "is not a hetsurgery package" in capsys.readouterr().err
    assert [p.name for p in (workdir / "out").iterdir()] == ["notes.txt"]


def test_export_and_render_refuse_what_is_not_a_package(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path)]) == 2
    assert "not a hetsurgery model package" in capsys.readouterr().err
    assert main(["render", "mlp", "--group", "0"]) == 2


def test_demo_ends_with_the_table_and_the_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    @dataclass
    class Fake:
        paths: dict
        barrier: dict

        def table(self) -> str:
            return "model       joint\nzip         0.822"

    paths = {"package (zip)": tmp_path / "zip", "onnx (zip)": tmp_path / "zip" / "model.onnx",
             "graph picture": tmp_path / "pictures" / "merged-graph.svg"}
    monkeypatch.setattr(hetsurgery.demo, "run_demo", lambda *a, **k: Fake(paths, {"unaligned": 1.0,
                                                                                   "permute-aligned": 0.1}))
    assert main(["demo", "-o", str(tmp_path), "--quick", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["model       joint", "zip         0.822"]
    assert lines[-3:] == [f"{what}: {path}" for what, path in paths.items()]
