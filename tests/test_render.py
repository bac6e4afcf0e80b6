"""Rendering: valid SVG for a graph and a width plan, PNG, and the .gv fallback when `dot` is missing."""

from __future__ import annotations

import pathlib
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch

import hetsurgery as hs
import hetsurgery.export.pictures as pictures
from hetsurgery.export import InputError, render, to_dot
from hetsurgery.plan.width_plan import GroupMatch, WidthPlan

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


def _zip_like_plan() -> WidthPlan:
    """Model A (3 neurons) and model B (4) into 4 merged neurons; A's neurons 0 and 2 both feed merged 0."""
    ma = torch.tensor([[0.25, 0, 0.25], [0, 0.5, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    mb = torch.tensor([[0.5, 0, 0, 0], [0, 0, 0, 0.5], [0, 1.0, 0, 0], [0, 0, 1.0, 0]], dtype=torch.float64)
    match = GroupMatch(0, 4, (ma, mb), ((ma > 0).double().T, (mb > 0).double().T), {"kind": "zip"})
    perm = GroupMatch.from_perms(1, [torch.arange(3), torch.tensor([2, 0, 1])], [0.5, 0.5])
    return WidthPlan("zip", (0.5, 0.5), 0, {0: match, 1: perm})


def _svg(path: pathlib.Path) -> ET.Element:
    root = ET.parse(path).getroot()  # raises on malformed XML
    assert root.tag == f"{SVG}svg"
    return root


def _titles(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}title")]


def test_graph_svg_shows_layers_groups_blocks_and_frozen_reasons(tmp_path: pathlib.Path) -> None:
    g = hs.trace(hs.zoo.transformer("manual", depth=1), torch.randn(2, 1, 8, 8))
    pic = render(g, tmp_path / "graph.svg")
    assert pic.rendered and pic.path == tmp_path / "graph.svg"
    root = _svg(pic.path)
    titles = _titles(root)
    assert "layer blocks.0.attn.q" in titles and "group 0" in titles
    assert "layer blocks.0.attn.q->group 1" in titles  # q produces the heads group
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "4x8" in text  # four heads of eight channels
    tooltips = [a.get(f"{XLINK}title") for a in root.iter(f"{SVG}a")]
    assert "frozen: model output" in tooltips
    frozen = next(grp for grp in g.groups if grp.frozen)
    assert f'fillcolor="{pictures.FROZEN}"' in to_dot(g).source.split(f'"group {frozen.id}" [')[1].split("]")[0]


def test_width_plan_svg_links_each_models_neurons_to_merged_neurons(tmp_path: pathlib.Path) -> None:
    pic = render(_zip_like_plan(), tmp_path / "plan.svg", group=0, names=("A", "B"))
    root = _svg(pic.path)
    edges = {t for t in _titles(root) if "->" in t}
    # model A (left) points at the merged column; model B (right) is drawn from it
    assert edges == {"m0_0->merged_0", "m0_2->merged_0", "m0_1->merged_1",
                     "merged_0->m1_0", "merged_1->m1_3", "merged_2->m1_1", "merged_3->m1_2"}
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "group 0: zip, A 3 + B 4 -> merged 4" in text


def test_png_and_a_permutation_group(tmp_path: pathlib.Path) -> None:
    pic = render(_zip_like_plan(), tmp_path / "perm.png", group=1)
    assert pic.path.read_bytes().startswith(b"\x89PNG")
    assert "merged_0 -> m1_2" in to_dot(_zip_like_plan(), group=1).source


def test_without_dot_the_source_is_written_with_install_advice(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    g = hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))
    with pytest.warns(RuntimeWarning, match="apt-get install graphviz"):
        pic = render(g, tmp_path / "graph.svg")
    assert not pic.rendered and pic.path == tmp_path / "graph.gv"
    assert "apt-get install graphviz" in pic.note and "dot -Tsvg" in pic.note
    assert pic.path.read_text().startswith("digraph MLP {")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.gv"]


def test_without_dot_on_the_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.warns(RuntimeWarning):
        pic = render(_zip_like_plan(), tmp_path / "plan.png")
    assert pic.path.suffix == ".gv" and "merged_0" in pic.path.read_text()


def test_unknown_objects_and_formats_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(hs.ExportError, match="cannot draw a str"):
        render("graph", tmp_path / "x.svg")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"use a \.svg, \.png or \.gv"):
        render(_zip_like_plan(), tmp_path / "x.pdf")
    with pytest.raises(InputError, match="no group 7"):
        render(_zip_like_plan(), tmp_path / "x.svg", group=7)
    with pytest.raises(InputError, match="3 names for a plan of 2 models"):
        render(_zip_like_plan(), tmp_path / "x.svg", names=("A", "B", "C"))


def test_output_folders_are_created_and_an_impossible_one_is_bad_input(tmp_path: pathlib.Path) -> None:
    assert render(_zip_like_plan(), tmp_path / "new" / "plan.gv").path.is_file()
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match=r"cannot write .*afile/plan\.gv: creating .*afile failed"):
        render(_zip_like_plan(), tmp_path / "afile" / "plan.gv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "new"]
