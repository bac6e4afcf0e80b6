"""A folder is a package only when it carries our marker and holds nothing but package files: saving
(and ``hetsurgery merge -o``) never deletes a folder of someone else's files."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import InputError, is_package, load, save


def _graph() -> hs.ModelGraph:
    return hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))


def _snapshot(folder: pathlib.Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` with its bytes (``None`` for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def _project(tmp_path: pathlib.Path) -> pathlib.Path:
    """Someone's project that happens to hold files named model.py and model.safetensors."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "train.csv").write_text("1,2,3\n")
    (proj / "model.py").write_text("import torch\n")
    (proj / "model.safetensors").write_bytes(b"")
    (proj / "train.py").write_text("print('training')\n")
    return proj


def test_a_project_with_model_files_is_not_a_package_and_save_leaves_it_untouched(tmp_path: pathlib.Path) -> None:
    proj = _project(tmp_path)
    before = _snapshot(proj)
    assert not is_package(proj)
    with pytest.raises(InputError, match=r"proj exists and is not empty, and is not a hetsurgery package \(it holds "
                                         r"files that are not package files: data/, train.py\)"):
        save(_graph(), proj)
    assert _snapshot(proj) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]  # no hidden sibling left


def test_merge_refuses_to_write_over_a_project(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    proj = _project(tmp_path)
    before = _snapshot(proj)
    config = tmp_path / "merge.yaml"
    config.write_text("models: [{factory: mlp}, {factory: mlp}]\ninput_shape: [1, 8, 8]\ncalibration: {every: 8}\n")
    assert main(["merge", str(config), "-o", str(proj), "--quiet"]) == 2
    assert "not a hetsurgery package" in capsys.readouterr().err
    assert _snapshot(proj) == before


def test_the_two_file_names_alone_are_no_marker_but_an_empty_folder_is_written_into(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    save(_graph(), folder)  # empty: written into
    for name in ("graph.json", "plan.json", "report.md"):
        (folder / name).unlink()
    (folder / "model.py").write_text("x = 1\n")
    assert not is_package(folder)
    with pytest.raises(InputError, match=r"it lacks plan\.json"):
        save(_graph(), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.py", "model.safetensors"]


def test_marker_needs_the_plan_format_and_the_generated_header(tmp_path: pathlib.Path) -> None:
    folder = save(_graph(), tmp_path / "pkg")
    assert is_package(folder)
    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps({k: v for k, v in plan.items() if k != "format"}))
    assert not is_package(folder)
    (folder / "plan.json").write_text(json.dumps(plan))
    code = (folder / "model.py").read_text()
    (folder / "model.py").write_text("# my own model\n" + code)
    assert not is_package(folder)
    with pytest.raises(InputError, match=r"its model\.py does not start with the header"):
        load(folder)


def test_a_package_is_replaced_also_with_the_files_our_commands_add(tmp_path: pathlib.Path) -> None:
    folder = save(_graph(), tmp_path / "pkg")
    added = ["model.onnx", "model.onnx.data", "graph.svg", "graph.png", "graph.gv", "plan-group-0.svg",
             "plan-group-12.png", "plan-group-3.gv", "__pycache__/model.cpython-311.pyc"]
    (folder / "__pycache__").mkdir()
    for name in added:
        (folder / name).write_bytes(b"ours")
    assert is_package(folder)
    assert load(folder)(torch.randn(1, 4)).shape == (1, 2)
    save(_graph(), folder, report="again")
    assert "again" in (folder / "report.md").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["graph.json", "model.py", "model.safetensors", "plan.json",
                                                        "report.md"]


@pytest.mark.parametrize("extra", ["notes.txt", "graph.svg.bak", "plan-group-x.svg", "model.onnx/", "data/",
                                   "__pycache__/other.pyc", ".hidden"])
def test_anything_else_in_a_package_folder_makes_it_no_package(extra: str, tmp_path: pathlib.Path) -> None:
    folder = save(_graph(), tmp_path / "pkg")
    path = folder / extra.rstrip("/")
    path.parent.mkdir(exist_ok=True)
    if extra.endswith("/"):
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    else:
        path.write_text("mine")
    before = _snapshot(folder)
    assert not is_package(folder)
    with pytest.raises(InputError, match="not package files: " + extra.replace(".", r"\.")):
        save(_graph(), folder)
    with pytest.raises(InputError, match="is not a hetsurgery model package: it holds files"):
        load(folder)
    assert _snapshot(folder) == before


def test_a_symbolic_link_is_no_package_file(tmp_path: pathlib.Path) -> None:
    folder = save(_graph(), tmp_path / "pkg")
    (tmp_path / "elsewhere").mkdir()
    (folder / "graph.svg").symlink_to(tmp_path / "elsewhere")
    assert not is_package(folder)
