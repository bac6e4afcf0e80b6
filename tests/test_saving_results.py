"""A result saves with everything it knows: ``MergeResult.save`` keeps the width plan, the depth plan and the
passes that balanced each model (the README's way to save; ``export.save(r.graph, ...)`` alone dropped the
depth plan), and ``AssemblyResult.save`` the assembly record."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import read_depth, read_package
from hetsurgery.passes import replay

X = torch.randn(64, 64)


@pytest.mark.parametrize("balance", ["add", "merge"])
def test_a_depth_merge_saves_its_depth_plan_and_the_passes_that_balanced_each_model(
        balance: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    deep, shallow = hs.zoo.mlp([16, 16, 16]), hs.zoo.mlp([16])
    r = hs.merge([deep, shallow], [X], method="zip", depth="cla", balance=balance, progress=False)
    folder = r.save(tmp_path / "merged")
    assert read_depth(folder) == r.depth and read_package(folder).plan.to_json() == r.plan.to_json()
    assert "merge method=zip" in (folder / "report.md").read_text()
    anchor = 0 if balance == "add" else 1
    other = r.depth.model(1 - anchor)
    doc = json.loads((folder / "plan.json").read_text())
    assert doc["depth"]["models"][0]["passes"] == [dict(p) for p in other.passes] != []
    kinds = {"add": "insert-identity", "merge": "fuse-relu-segment"}[balance]
    assert [p["pass"] for p in other.passes] == [kinds] * len(other.passes)
    # replaying them on the other model traced again gives it the anchor's depth
    balanced = replay(hs.trace([deep, shallow][1 - anchor], X[:2]), other.passes)
    assert [len(st) for st in balanced.stages] == [len(st) for st in r.graph.stages]
    assert main(["render", str(folder), "--depth", "-o", str(tmp_path / "depth.gv")]) == 0
    assert "saved without a depth plan" not in capsys.readouterr().err


def test_a_width_merge_saves_its_plan_and_report_and_takes_another_report(tmp_path: pathlib.Path) -> None:
    r = hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([12])], [X], method="zip", progress=False)
    folder = r.save(tmp_path / "merged", report="joint accuracy 0.86", name="zipped")
    pkg = read_package(folder)
    assert pkg.plan is not None and pkg.plan.to_json() == r.plan.to_json() and pkg.depth is None and "joint accuracy 0.86" in pkg.report
    assert torch.allclose(pkg.model(X), r.model(X), atol=1e-6)
