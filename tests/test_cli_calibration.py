"""A config without ``calibration:`` gets no data, never the 8x8 digits silently: data-free methods merge without
it; anything that measures activations (or recomputes BatchNorm statistics) is refused before any work."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import is_package

MLPS = [{"factory": "mlp", "kwargs": {"hidden": [16, 16]}, "weights": "a.safetensors"},
        {"factory": "mlp", "kwargs": {"hidden": [16, 16]}, "weights": "b.safetensors"}]


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    torch.manual_seed(0)
    for name in ("a", "b"):
        safetensors.torch.save_file(hs.zoo.mlp([16, 16]).state_dict(), str(tmp_path / f"{name}.safetensors"))
    return tmp_path


@pytest.fixture
def no_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the merge started before the config was refused")

    import hetsurgery.assembly
    import hetsurgery.merging

    monkeypatch.setattr(hetsurgery.merging, "merge", work)
    monkeypatch.setattr(hetsurgery.assembly, "assemble", work)


def _run(folder: pathlib.Path, command: str, config: dict[str, Any], capsys: pytest.CaptureFixture[str]
         ) -> tuple[int, str]:
    path = folder / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code = main([command, str(path), "-o", str(folder / "out"), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("width", "depth", "says"), [
    ({"method": "zip"}, None, "width.method 'zip' measures activations"),
    ({"method": "permute"}, None, "width.method 'permute' measures activations"),
    ({"method": "ot"}, None, "width.method 'ot' measures activations"),
    ({"method": "average"}, {"method": "lma"}, "depth.method 'lma' compares units by CKA"),
    ({"method": "weight"}, {"method": "cla", "balance": "merge", "cost": "width"}, "depth.balance 'merge'"),
])
def test_a_method_that_measures_activations_needs_a_calibration_section(
        width: dict, depth: dict | None, says: str, folder: pathlib.Path, no_merge: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = {"models": MLPS, "input_shape": [1, 8, 8], "width": width, **({"depth": depth} if depth else {})}
    code, err = _run(folder, "merge", config, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"merge.yaml: a calibration set is required: {says}" in err and "add a calibration: section" in err
    assert not (folder / "out").exists()


def test_a_3x32x32_model_without_calibration_is_told_what_is_missing(folder: pathlib.Path, no_merge: None,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """On main it calibrated on the 8x8 digits and failed with 'examples of batch 0 have shape (1, 8, 8)'."""
    resnets = [{"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [1, 1, 1], "in_channels": 3}}] * 2
    code, err = _run(folder, "merge", {"models": resnets, "input_shape": [3, 32, 32]}, capsys)
    assert code == 2 and "a calibration set is required: width.method 'zip'" in err and "(1, 8, 8)" not in err


@pytest.mark.parametrize(("width", "depth"), [({"method": "weight"}, None), ({"method": "average"}, None),
                                              ({"method": "mal"}, None),
                                              ({"method": "ot", "options": {"cost": "weights"}}, None),
                                              ({"method": "average"}, {"method": "cla", "cost": "width"})])
def test_data_free_methods_merge_without_a_calibration_section(width: dict, depth: dict | None, folder: pathlib.Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = {"models": MLPS, "input_shape": [1, 8, 8], "width": width, **({"depth": depth} if depth else {})}
    code, err = _run(folder, "merge", config, capsys)
    assert (code, err) == (0, "")
    assert is_package(folder / "out")


def test_batchnorm_statistics_need_data_or_reset_bn_false(folder: pathlib.Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    resnets = [{"factory": "hetsurgery.zoo:resnet", "kwargs": {"blocks_per_stage": [1, 1, 1]}, "name": name} for name in ("A", "B")]
    config = {"models": resnets, "input_shape": [1, 8, 8], "width": {"method": "average"}}
    code, err = _run(folder, "merge", config, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "models.0 (A) has BatchNorm layers, whose statistics reset_bn recomputes on calibration data" in err
    assert "or set reset_bn: false" in err and not (folder / "out").exists()
    code, err = _run(folder, "merge", {**config, "reset_bn": False}, capsys)
    assert (code, err) == (0, "")


def test_assemble_without_calibration(folder: pathlib.Path, no_merge: None, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    config = {"base": MLPS[0], "donors": [MLPS[1]], "input_shape": [1, 8, 8], "align": {"method": "zip"}}
    code, err = _run(folder, "assemble", config, capsys)
    assert code == 2 and "assemble.yaml: a calibration set is required: align.method 'zip' measures" in err


def test_assemble_with_a_data_free_alignment_needs_no_calibration(folder: pathlib.Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = {"base": MLPS[0], "donors": [MLPS[1]], "input_shape": [1, 8, 8], "align": {"method": "mal"}}
    assert _run(folder, "assemble", config, capsys) == (0, "")
    assert is_package(folder / "out")
