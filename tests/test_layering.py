"""The import layering of the package (DESIGN §2): a lower layer never imports a higher one.

``ir <- tracing <- plan, passes <- export <- merging <- assembly <- cli``. ``zoo``, ``errors`` and ``memory`` sit under
everything (``zoo`` imports nothing of hetsurgery); ``plan`` and ``passes`` are siblings that never import each
other; ``evaluate`` scores merged models beside ``merging``; ``assembly`` (MAL, the λ threshold) balances and
aligns donors with merging's code, so it sits above it and ``merging`` never imports it; ``stream`` (checkpoints read
lazily, merged and operated on block by block) plans with merging's code and sits beside ``assembly``; ``demo`` and
``config``
(the merge config and its commands) drive it all for ``cli``. ``pytest -k layering`` runs this file.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import hetsurgery as hs

LAYERS = {"errors": 0, "memory": 0, "zoo": 0, "ir": 1, "tracing": 2, "plan": 3, "passes": 3, "export": 4, "merging": 5,
          "evaluate": 5, "assembly": 6, "stream": 6, "demo": 7, "config": 7, "cli": 8}
TOP = 9  # hetsurgery/__init__.py re-exports every layer: importing it from inside pulls in all of them
INDEPENDENT = {frozenset({"plan", "passes"})}  # siblings on one layer that never import each other
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
    """The imports of a file at ``hetsurgery/<rel>`` that reach a higher layer, an independent sibling
    (``plan`` and ``passes``), or, from zoo, any other package."""
    layer = rel[0].removesuffix(".py")
    package = ["hetsurgery", *rel[:-1]]
    bad = []
    for name in _imported(ast.parse(source), package):
        target = _layer_of(name)
        other = name.split(".")[1:2]
        if target is None or other == [layer]:
            continue
        if layer == "zoo" or target > LAYERS[layer] or frozenset({layer, *other}) in INDEPENDENT:
            bad.append(f"hetsurgery/{'/'.join(rel)} imports {name}")
    return bad


@pytest.mark.parametrize("source", ["from hetsurgery import merge", "from ..merging import merge",
                                    "import hetsurgery.merging.driver as d", "from hetsurgery.merging import merge",
                                    "from hetsurgery import trace", "import hetsurgery",
                                    "def f():\n    from ...merging.driver import merge"])
def test_layering_check_catches_every_import_spelling(source: str) -> None:
    assert _violations(source, ("ir", "sub", "x.py")) if "..." in source else _violations(source, ("ir", "x.py"))


def test_layering_check_allows_downward_and_sibling_imports() -> None:
    assert not _violations("from . import slots\nfrom .slots import Slot\nfrom hetsurgery.errors import IRError",
                           ("ir", "x.py"))
    assert not _violations("from ..ir import ModelGraph\nfrom hetsurgery import zoo", ("export", "x.py"))
    assert _violations("from hetsurgery.errors import IRError", ("zoo", "x.py"))  # zoo stands alone


@pytest.mark.parametrize(("source", "rel"), [
    ("from hetsurgery.passes import PadWidth", ("plan", "solvers", "mal.py")),
    ("from ..passes.resize import resized_groups", ("plan", "x.py")),
    ("import hetsurgery.plan.stats", ("passes", "x.py")),
    ("from hetsurgery import plan", ("passes", "x.py")),
])
def test_layering_keeps_plan_and_passes_apart(source: str, rel: tuple[str, ...]) -> None:
    assert _violations(source, rel)


def test_layering_lets_merge_use_both_plan_and_passes() -> None:
    assert not _violations("from hetsurgery.passes import PadWidth\nfrom hetsurgery.plan import WidthPlan",
                           ("merging", "methods.py"))
    assert not _violations("from hetsurgery.ir import SlotMaps\nfrom hetsurgery.tracing import trace",
                           ("passes", "x.py"))


def test_layering_gives_every_top_level_module_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py")))}
    assert names - {"__init__", "__main__"} == set(LAYERS)


def test_layering_lower_layers_never_import_higher_ones() -> None:
    problems = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0].removesuffix(".py") in LAYERS:
            problems += _violations(path.read_text(), rel)
    assert not problems, "\n".join(problems)


def test_merging_never_imports_assembly_which_sits_above_it() -> None:
    assert _violations("from hetsurgery.assembly import assemble", ("merging", "driver.py"))
    assert not _violations("from hetsurgery.merging.balance import insert_units", ("assembly", "depth.py"))


def test_the_merge_driver_is_reachable_beside_the_merge_function() -> None:
    """``hetsurgery.merge`` is the function; the package that holds it is ``hetsurgery.merging`` (the function
    shadowed a package of the same name: ``import hetsurgery.merge.driver as d`` failed)."""
    import hetsurgery.merging.driver as d

    assert hs.merge is d.merge and hs.merging.driver is d and callable(hs.merge)
