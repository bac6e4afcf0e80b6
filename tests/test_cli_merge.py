"""`hetsurgery merge CONFIG.yaml -o OUT`, `export`, `render`, `inspect` on a package, and `demo`'s ending:
bad input exits 2 with a message naming the problem and leaves no output folder; a failed merge exits 1."""

from __future__ import annotations

import importlib
import pathlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch
import yaml

import hetsurgery as hs
import hetsurgery.demo
import hetsurgery.export.onnx as onnx_export
from hetsurgery.cli import main
from hetsurgery.export import load, save

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
    assert sorted(p.name for p in out.iterdir()) == ["graph.json", "model.py", "model.safetensors", "plan.json", "report.md"]
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


def _option_value(c: dict) -> None:
    c["width"] = {"method": "ot", "options": {"solver": "nope"}}


def _target(c: dict) -> None:
    c["width"]["target"] = 5


def _reset_bn(c: dict) -> None:
    c["reset_bn"] = -3


BAD = {
    "unknown key": (_typo, "models.0.weigths: unknown key (a typo?); the keys here are factory, kwargs, weights, name"),
    "missing file": (_missing, "nothere.pt does not exist"),
    "wrong input shape": (_shape, "does not run on inputs of shape (2, 3, 32, 32)"),
    "pickled module": (_pickled, "holds pickled Python objects"),
    "unknown option": (_option, "width: method 'zip' takes no option 'alpah' (its options: alpha, beta)"),
    "bad option value": (_option_value, "width: method 'ot': option solver must be 'emd' or 'sinkhorn', not 'nope'"),
    "target beyond the models": (_target, "width.target 5 is not one of the 2 models (0 to 1)"),
    "negative reset_bn": (_reset_bn, "reset_bn: give true, false or a positive number of samples, not -3"),
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


def test_a_refused_merge_exits_2_and_writes_nothing(workdir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["width"] = {"method": "permute"}  # permute needs equal widths; these differ: the input's fault
    assert main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"]) == 2
    assert "hetsurgery merge:" in capsys.readouterr().err
    assert _leftovers(workdir) == []


class Stop(hs.MergeError):
    """Raised by the stand-in for merge once it has seen its arguments."""


def _spy(monkeypatch: pytest.MonkeyPatch, error: Exception) -> dict:
    seen: dict = {}

    def fake_merge(models: object, data: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise error

    # the package hetsurgery.merging, not the function of that name that hetsurgery exports
    monkeypatch.setattr(importlib.import_module("hetsurgery.merging"), "merge", fake_merge)
    return seen


def test_merge_gets_the_configs_device_and_reset_bn(workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seen = _spy(monkeypatch, Stop("stopped after the arguments"))
    config = {**yaml.safe_load(yaml.safe_dump(CONFIG)), "device": "cpu", "reset_bn": 64}
    config.pop("evaluate")
    assert main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"]) == 1
    assert "stopped after the arguments" in capsys.readouterr().err
    assert str(seen["device"]) == "cpu" and seen["reset_bn"] == 64


def test_a_merge_that_refuses_its_input_exits_2(workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _spy(monkeypatch, hs.MergeInputError("group 0: cannot zip 80 features into 500"))
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config.pop("evaluate")
    assert main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err == "hetsurgery merge: group 0: cannot zip 80 features into 500\n"
    assert _leftovers(workdir) == []


def test_a_bug_is_not_reported_as_bad_input(workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _spy(monkeypatch, ValueError("an internal mistake"))  # no typed error: not guessed to be the input's fault
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config.pop("evaluate")
    with pytest.raises(ValueError, match="an internal mistake"):
        main(["merge", str(_write(workdir, config)), "-o", str(workdir / "out"), "--quiet"])
    assert _leftovers(workdir) == []


@pytest.fixture
def package(tmp_path: pathlib.Path) -> pathlib.Path:
    return save(hs.trace(hs.zoo.mlp([16]), torch.randn(2, 1, 8, 8)), tmp_path / "pkg")


def test_export_exits_1_on_a_parity_failure_and_0_with_no_check(package: pathlib.Path, tmp_path: pathlib.Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    real_session = onnx_export._session

    class Off:  # onnxruntime, but every output is 1e-2 too large
        def __init__(self, path: pathlib.Path) -> None:
            self.session, _ = real_session(path)

        def get_inputs(self) -> list:
            return self.session.get_inputs()

        def run(self, names: object, feed: dict) -> list:
            return [y + 1e-2 for y in self.session.run(names, feed)]

    monkeypatch.setattr(onnx_export, "_session", lambda path: (Off(path), ("CPUExecutionProvider",)))
    assert main(["export", str(package), "-o", str(tmp_path / "a.onnx"), "--quiet"]) == 1
    assert "onnxruntime disagrees" in capsys.readouterr().err and not (tmp_path / "a.onnx").exists()
    assert main(["export", str(package), "-o", str(tmp_path / "b.onnx"), "--no-check", "--quiet"]) == 0
    assert "FAILED" in capsys.readouterr().out and (tmp_path / "b.onnx").is_file()


def _syntax_error(folder: pathlib.Path) -> None:
    code = folder / "model.py"
    code.write_text(code.read_text() + "\ndef broken(:\n")


def _missing_weight(folder: pathlib.Path) -> None:
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    del state["layers.0.bias"]
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("damage", [_syntax_error, _missing_weight])
@pytest.mark.parametrize("command", ["export", "inspect"])
def test_a_damaged_package_exits_2(damage: object, command: str, package: pathlib.Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    damage(package)  # type: ignore[operator]
    assert main([command, str(package), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hetsurgery {command}: ") and "Write the package again" in err


def test_export_with_a_wrong_input_shape_exits_2_before_exporting(package: pathlib.Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(package), "--input-shape", "3,32,32", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hetsurgery export: {package} does not run on inputs of shape (2, 3, 32, 32)")
    assert "the package was saved with (1, 8, 8)" in err and len(err.strip().splitlines()) == 1
    assert not (package / "model.onnx").exists()


def test_render_and_export_refuse_outputs_they_cannot_write(package: pathlib.Path, tmp_path: pathlib.Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("not a folder")
    assert main(["render", str(package), "-o", str(tmp_path / "graph.pdf")]) == 2
    assert "use a .svg, .png or .gv file name" in capsys.readouterr().err
    for argv in (["render", str(package), "-o", str(tmp_path / "afile" / "graph.svg")],
                 ["export", str(package), "-o", str(tmp_path / "afile" / "m.onnx"), "--quiet"]):
        assert main(argv) == 2
        assert "afile is a file, not a folder; choose an output path" in capsys.readouterr().err


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
