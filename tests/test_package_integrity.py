"""Package integrity: plan.json records the SHA-256 of model.safetensors, model.py and graph.json and
loading checks them; weights must be finite; model.safetensors gets the mode of the other files."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest
import safetensors.torch
import torch
from package_edits import rehash

import hetsurgery as hs
from hetsurgery.export import InputError, load, read_package, save


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    return save(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)), tmp_path / "pkg")


@pytest.mark.parametrize("name", ["model.safetensors", "model.py", "graph.json"])
@pytest.mark.parametrize("trust_code", [False, True])
def test_one_changed_byte_is_named(name: str, trust_code: bool, folder: pathlib.Path) -> None:
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"pkg/{name} was changed after the package was written: its SHA-256 .* "
                                         r"Write the package again"):
        load(folder, trust_code=trust_code)
    with pytest.raises(InputError, match=rf"pkg/{name} was changed"):
        read_package(folder, trust_code=trust_code)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("trust_code", [False, True])
def test_non_finite_weights_name_the_tensor(value: float, trust_code: bool, folder: pathlib.Path) -> None:
    path = folder / "model.safetensors"
    state = safetensors.torch.load_file(str(path))
    state["layers.2.weight"][1, 3] = value
    safetensors.torch.save_file(state, str(path))
    rehash(folder)  # past the digests: the values themselves are wrong
    with pytest.raises(InputError, match=r"tensor 'layers.2.weight' holds 1 NaN or Inf value of 16"):
        load(folder, trust_code=trust_code)


def test_saving_non_finite_weights_is_refused(tmp_path: pathlib.Path) -> None:
    model = hs.zoo.mlp([8], in_features=4, num_classes=2)
    with torch.no_grad():
        model.layers[0].bias[2] = float("nan")
    with pytest.raises(InputError, match=r"MLP: nothing was written: tensor 'layers.0.bias' holds 1 NaN"):
        save(model, tmp_path / "pkg", example_inputs=torch.randn(2, 4))
    assert list(tmp_path.iterdir()) == []


def test_a_file_missing_from_the_package_is_named(folder: pathlib.Path) -> None:
    (folder / "graph.json").unlink()
    with pytest.raises(InputError, match=r"pkg lacks graph.json"):
        load(folder)


def test_a_package_without_digests_is_refused_unless_its_code_is_trusted(folder: pathlib.Path) -> None:
    """Packages written before graph.json: no digests and no graph.json."""
    (folder / "graph.json").unlink()
    plan = json.loads((folder / "plan.json").read_text())
    del plan["files"]
    (folder / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match=r"written by an older hetsurgery.*trust_code=True"):
        load(folder)
    assert load(folder, trust_code=True)(torch.randn(1, 4)).shape == (1, 2)


@pytest.fixture(params=[0o022, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_model_safetensors_has_the_mode_of_the_other_files(umask: int, tmp_path: pathlib.Path) -> None:
    folder = save(hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4)), tmp_path / "pkg")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
