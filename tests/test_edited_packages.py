"""Plans and packages survive structural edits: a graph with inserted units saves (plan.json v2 lists the
passes), loads in a fresh process, exports to ONNX within the parity tolerance and renders its units and
stages with the inserted ones marked; pass specs replay on the original model; width plans follow groups
by their stable keys."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import torch
from helpers import randomise, rel_err

import hetsurgery as hs
from hetsurgery.export import read_package, render, save, to_onnx
from hetsurgery.passes import InsertIdentity, InsertZeroResidual, Pipeline, replay, specs

X = torch.randn(3, 1, 8, 8)


def _edited() -> tuple[torch.nn.Module, hs.ModelGraph]:
    model = randomise(hs.zoo.resnet((2, 2, 1)), 1)
    g = hs.trace(model, X)
    return model, Pipeline((InsertZeroResidual("stage0", (1,)), InsertZeroResidual("stage1", (2, 2))))(g)


def test_a_graph_with_inserted_units_saves_loads_in_a_fresh_process_and_exports(tmp_path: pathlib.Path) -> None:
    model, g = _edited()
    folder = save(g, tmp_path / "pkg")
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["format"] == "hetsurgery-plan/2" and plan["width"] is None and plan["depth"] is None
    assert plan["passes"] == [{"pass": "insert-zero-residual", "stage": "stage0", "positions": [1]},
                              {"pass": "insert-zero-residual", "stage": "stage1", "positions": [2, 2]}]
    script = ("import sys, torch; from hetsurgery.export import read_package\n"
              "p = read_package(sys.argv[1]); x = torch.load(sys.argv[2])\n"
              "torch.save(p.model(x), sys.argv[3]); print([s['pass'] for s in p.passes])")
    torch.save(X, tmp_path / "x.pt")
    out = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['insert-zero-residual', 'insert-zero-residual']"
    with torch.no_grad():
        assert rel_err(model(X), torch.load(tmp_path / "y.pt")) <= 1e-5  # the function of the model it came from
    pkg = read_package(folder)
    report = to_onnx(pkg.model, pkg.example_inputs, tmp_path / "model.onnx")
    assert report.passed


def test_a_loaded_package_renders_its_units_stages_and_inserted_blocks(tmp_path: pathlib.Path) -> None:
    _, g = _edited()
    pkg = read_package(save(g, tmp_path / "pkg"))
    again = hs.trace(pkg.model, pkg.example_inputs)  # the origin of every node travels in graph.json
    assert sorted(u.key for u in again.units if u.origin) == ["layer1_2_conv1", "layer2_2_conv1", "layer2_3_conv1"]
    picture = render(again, tmp_path / "graph.svg")
    assert picture.rendered
    titles = [t.text or "" for t in ET.parse(picture.path).getroot().iter("{http://www.w3.org/2000/svg}text")]
    assert any("stage1: 4 blocks" in t for t in titles)
    assert sum("[insert-zero-residual]" in t for t in titles) == 3
    assert any("layer2_0_conv1 (fixed)" in t for t in titles)


def test_specs_replay_on_the_original_model() -> None:
    model = randomise(hs.zoo.mlp([8, 8]), 2)
    g = hs.trace(model, torch.randn(2, 64))
    edited = InsertIdentity("stage0", (1, 2))(InsertIdentity("stage0", (1,))(g))
    again = replay(g, json.loads(json.dumps(specs(edited.passes))))  # through JSON, as plan.json keeps them
    assert again.dump() == edited.dump() and again.module.code == edited.module.code


def test_a_width_plan_follows_its_groups_by_key_after_an_edit() -> None:
    torch.manual_seed(0)
    a, b = hs.zoo.mlp([8, 6]), hs.zoo.mlp([8, 6])
    result = hs.merge([a, b], [torch.randn(64, 64)], method="permute", progress=False)
    plan = hs.plan.WidthPlan.from_json(result.plan.to_json())
    g = hs.trace(a, torch.randn(2, 64))
    edited = InsertIdentity("stage0", (1,))(g)  # a new group appears between the two hidden groups
    moved = plan.on(edited.groups)
    assert {edited.group(gid).key for gid in moved.groups} == set(plan.keys.values())
    assert moved.groups[edited.group(2).id].size == 6  # layers_2's group was id 1, is id 2 now
    assert [gid for gid, key in moved.keys.items() if key == "layers_2"] == [2]
