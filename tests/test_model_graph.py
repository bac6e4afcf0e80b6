"""ModelGraph views: networkx, summary, coverage, verify (the import layering is in test_layering.py)."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import pytest
import torch

import hetsurgery as hs


def test_to_networkx_is_bipartite_layers_and_groups() -> None:
    g = hs.trace(hs.zoo.resnet20(in_channels=1), torch.randn(2, 1, 8, 8))
    dg = g.to_networkx()
    kinds = nx.get_node_attributes(dg, "kind")
    assert set(kinds.values()) == {"layer", "group"}
    assert all(kinds[u] != kinds[v] for u, v in dg.edges)
    assert dg.has_edge(("layer", "conv1"), ("group", 0))
    assert dg.has_edge(("group", 0), ("layer", "layer1.0.conv1"))
    assert dg.nodes[("group", 12)]["frozen"] == "model output"


def test_summary_lists_every_group() -> None:
    g = hs.trace(hs.zoo.densenet(), torch.randn(2, 1, 8, 8))
    text = g.summary()
    assert f"coverage {g.coverage():.3f}" in text
    rows = text.split(f"\n{len(g.units)} units, {len(g.stages)} stages\n")[0]  # the units follow the groups
    assert len(rows.splitlines()) == len(g.groups) + 2
    assert "[frozen: model output]" in text


def test_coverage_counts_untraced_parameters_against_it() -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    assert g.coverage() == 1.0
    hidden = next(grp for grp in g.groups if grp.perm_ok)
    broken = replace(g, groups=tuple(replace(grp, frozen="test", by_design=False) if grp is hidden else grp
                                     for grp in g.groups))
    assert broken.coverage() == pytest.approx(2 / 58)  # only the head bias avoids the hidden group


def test_verify_reports_overlapping_slots() -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    dup = replace(g.groups[1], id=5, slots=g.groups[0].slots[:1])
    with pytest.raises(hs.IRError, match="overlap"):
        replace(g, groups=(*g.groups, dup)).verify()


def test_verify_reports_a_permutable_slot_on_an_axis_fixed_by_design() -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    hidden = next(grp for grp in g.groups if grp.perm_ok)
    bad = replace(g, fixed_axes=g.fixed_axes | {("layers.2.weight", 1)})
    with pytest.raises(hs.IRError, match=rf"group {hidden.id} .*layers.2.weight\[1\] .*fixed by design"):
        bad.verify()
    frozen = replace(bad, groups=tuple(replace(grp, frozen="test") for grp in g.groups))
    frozen.verify()  # a frozen group never moves, so the other use is safe


def test_unknown_group_is_an_ir_error() -> None:
    g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
    with pytest.raises(hs.IRError, match="no group 7"):
        g.group(7)


def test_updating_a_graph_runs_nothing_and_the_ir_value_does_not_import_lowering() -> None:
    """``with_updates`` builds a structural copy holding the new tensors, widths too, without a forward pass
    (it ran ShapeProp); ``ir/graph.py`` and ``ir/lowering.py`` no longer import each other."""
    import ast
    import pathlib

    from hetsurgery.passes import PadWidth

    g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
    runs: list[int] = []
    g.module.get_submodule("layers.0").register_forward_pre_hook(lambda *_: runs.append(1))
    wider = PadWidth(0, 12)(g)
    assert runs == [] and tuple(wider.params["layers.0.weight"].shape) == (12, 64)
    assert hs.to_module(wider).get_submodule("layers.0").out_features == 12
    source = (pathlib.Path(hs.__file__).parent / "ir" / "graph.py").read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert "hetsurgery.ir.lowering" not in imported
