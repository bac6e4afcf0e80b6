"""ModelGraph views: networkx, summary, coverage, verify; and the import layering of the package."""

from __future__ import annotations

import ast
import pathlib
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
    assert len(text.splitlines()) == len(g.groups) + 2
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


LAYERS = {"ir": 0, "tracing": 1, "plan": 2, "passes": 2, "export": 3, "merge": 4, "cli": 5}


def test_lower_layers_never_import_higher_ones() -> None:
    root = pathlib.Path(hs.__file__).parent
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        layer = rel[0].removesuffix(".py")
        if layer not in LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "hetsurgery" and len(parts) > 1 and parts[1] in LAYERS:
                    assert LAYERS[parts[1]] <= LAYERS[layer], f"{path} imports {name}"
