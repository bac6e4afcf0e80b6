"""Depth merging from the command line: the YAML's ``depth:`` section, the package it writes (plan.json keeps the
depth plan), ONNX export with the parity check, pictures of the depth plan; bad depth input exits 2."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml
from test_depth_merge import APPLIES

from hetsurgery.cli import main

FACTORIES = {  # the pairs of test_depth_merge.py, spelled as a config names them
    "mlp 5v3": ({"factory": "mlp", "kwargs": {"hidden": [24, 20, 16, 16, 12]}},
                {"factory": "mlp", "kwargs": {"hidden": [16, 12, 12]}}),
    "vgg 3v2": ({"factory": "vgg", "kwargs": {"cfg": [8, 8, 8, "M", 12, 12, 12], "hidden": 16}},
                {"factory": "vgg", "kwargs": {"cfg": [6, 6, "M", 8, 8], "hidden": 12}}),
    "resnet 3v2": ({"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [3, 3, 3]}},
                   {"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [2, 2, 2]}}),
    "resnet 3v1 x2": ({"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [3, 3, 3]}},
                      {"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [1, 1, 1], "width": 2}}),
    "transformer 4v2": ({"factory": "transformer", "kwargs": {"depth": 4}},
                        {"factory": "transformer", "kwargs": {"depth": 2}}),
}


def _config(folder: pathlib.Path, name: str, depth: str, balance: str) -> pathlib.Path:
    a, b = FACTORIES[name]
    cfg = {"models": [a, b], "input_shape": [1, 8, 8], "calibration": {"every": 8}, "width": {"method": "zip"},
           "depth": {"method": depth, "balance": balance}, "reset_bn": 64}
    path = folder / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# each pair once, the depth methods and balances taken in turn (every combination runs through the API in
# test_depth_merge.py; the command line adds the YAML, the package and the export, which no method changes)
_PAIRS = list(dict.fromkeys(n for n, _, _ in APPLIES))
FROM_THE_COMMAND_LINE = [[a for a in APPLIES if a[0] == name][k % sum(a[0] == name for a in APPLIES)]
                         for k, name in enumerate(_PAIRS, start=1)]


@pytest.mark.parametrize(("name", "depth", "balance"), FROM_THE_COMMAND_LINE)
def test_a_depth_merge_from_the_command_line_saves_and_exports(tmp_path: pathlib.Path, name: str, depth: str,
                                                                balance: str, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(_config(tmp_path, name, depth, balance)), "-o", str(out), "--quiet"]) == 0
    assert "depth plan (anchor: model" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["depth"]["models"][0]["stages"][0]["method"] == depth
    assert main(["export", str(out), "--quiet"]) == 0  # exit 0 only when onnxruntime agrees with torch
    assert "passed" in capsys.readouterr().out


def test_the_depth_plan_and_its_cka_matrices_render_from_a_package(tmp_path: pathlib.Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(_config(tmp_path, "resnet 3v2", "lma", "add")), "-o", str(out), "--quiet"]) == 0
    assert main(["render", str(out), "--depth", "--quiet"]) == 0
    assert main(["render", str(out), "--cka", "--quiet"]) == 0
    svg = (out / "depth-plan.svg").read_text()
    assert "inserted" in svg and "layer1_2_conv1" in svg and (out / "cka.png").stat().st_size > 1000
    assert main(["merge", str(_config(tmp_path, "resnet 3v2", "lma", "add")), "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()  # the pictures our commands write leave the folder a package: it is replaced again


@pytest.mark.parametrize(("a", "b", "depth", "says"), [
    ({"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [3, 1, 1]}},
     {"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [2, 1, 1]}},
     {"method": "lma", "balance": "merge"}, "stage of residual blocks, and only Linear layers fuse (CLAFusion's merge "
                                            "layers). balance='add' can"),
    ({"factory": "vgg", "kwargs": {"cfg": [8, 8, 8, "M", 8]}}, {"factory": "vgg", "kwargs": {"cfg": [8, 8, "M", 8]}},
     {"method": "cla", "balance": "merge"}, "only Linear layers and 1x1 convolutions"),
    ({"factory": "vgg", "kwargs": {"cfg": [8, "M", 8, "M", 8]}}, {"factory": "vgg", "kwargs": {"cfg": [8, "M", 8]}},
     {"method": "sma"}, "cannot be paired"),
    ({"factory": "vgg", "kwargs": {"cfg": [8, "M", 8]}}, {"factory": "vgg", "kwargs": {"cfg": [8, "M", 8, "M", 8]}},
     {"method": "sma"}, "cannot be paired"),
    ({"factory": "mlp", "kwargs": {"hidden": [8, 8, 8]}}, {"factory": "mlp", "kwargs": {"hidden": [8]}},
     {"method": "sma", "cost": "width"}, "use it with depth='cla'"),
])
def test_bad_depth_input_exits_2_and_writes_nothing(tmp_path: pathlib.Path, a: dict, b: dict, depth: dict, says: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"models": [a, b], "input_shape": [1, 8, 8], "calibration": {"every": 8}, "depth": depth}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
