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


# DESIGN §2: ir <- tracing <- plan, passes <- export <- merge <- cli. zoo and errors sit under everything
# (zoo imports nothing of hetsurgery); evaluate scores merged models beside merge; demo drives it all for cli,
# and config turns the user's files and arguments into calls for cli.
LAYERS = {"errors": 0, "zoo": 0, "ir": 1, "tracing": 2, "plan": 3, "passes": 3, "export": 4, "merge": 5,
          "evaluate": 5, "demo": 6, "config": 6, "cli": 7}
TOP = 8  # hetsurgery/__init__.py re-exports every layer: importing it from inside pulls in all of them
ROOT = pathlib.Path(hs.__file__).parent


def _imported(tree: ast.AST, package: list[str]) -> list[str]:
    """Every module (or module.name) an AST imports, relative imports resolved against ``package``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out += [f"{module}.{a.name}" for a in node.names]  # `from hetsurgery import merge` names merge
    return out


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "hetsurgery":
        return None
    if len(parts) == 1 or parts[1] not in LAYERS:
        return TOP
    return LAYERS[parts[1]]


def _violations(source: str, rel: tuple[str, ...]) -> list[str]:
    """The imports of a file at ``hetsurgery/<rel>`` that reach a higher layer (or, from zoo, any other)."""
    layer = rel[0].removesuffix(".py")
    package = ["hetsurgery", *rel[:-1]]
    bad = []
    for name in _imported(ast.parse(source), package):
        target = _layer_of(name)
        if target is None or name.split(".")[1:2] == [layer]:
            continue
        if layer == "zoo" or target > LAYERS[layer]:
            bad.append(f"hetsurgery/{'/'.join(rel)} imports {name}")
    return bad


@pytest.mark.parametrize("source", ["from hetsurgery import merge", "from ..merge import merge",
                                    "import hetsurgery.merge.driver as d", "from hetsurgery.merge import merge",
                                    "from hetsurgery import trace", "import hetsurgery",
                                    "def f():\n    from ...merge.driver import merge"])
def test_layering_check_catches_every_import_spelling(source: str) -> None:
    assert _violations(source, ("ir", "sub", "x.py")) if "..." in source else _violations(source, ("ir", "x.py"))


def test_layering_check_allows_downward_and_sibling_imports() -> None:
    assert not _violations("from . import slots\nfrom .slots import Slot\nfrom hetsurgery.errors import IRError",
                           ("ir", "x.py"))
    assert not _violations("from ..ir import ModelGraph\nfrom hetsurgery import zoo", ("export", "x.py"))
    assert _violations("from hetsurgery.errors import IRError", ("zoo", "x.py"))  # zoo stands alone


def test_every_top_level_module_has_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py")))}  # plan/ is a namespace package
    assert names - {"__init__", "__main__"} == set(LAYERS)


def test_lower_layers_never_import_higher_ones() -> None:
    problems = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0].removesuffix(".py") in LAYERS:
            problems += _violations(path.read_text(), rel)
    assert not problems, "\n".join(problems)
