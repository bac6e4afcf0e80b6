"""Library code draws on its own ``matplotlib.figure.Figure``: it never calls ``matplotlib.use`` or pyplot, so a
user's backend (a notebook's, an interactive window's) is what it was after hetsurgery draws."""

from __future__ import annotations

import pathlib

import matplotlib
import torch

import hetsurgery as hs
from hetsurgery.evaluate import Curve, plot_curves
from hetsurgery.export.depth_pictures import cka_heatmap
from hetsurgery.plan.depth import Balance, DepthMethod, DepthPlan, ModelDepth, align_stage

ROOT = pathlib.Path(hs.__file__).parent


def test_no_library_module_picks_a_backend_or_uses_pyplot() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if "matplotlib.use(" in p.read_text() or "pyplot" in p.read_text()]
    assert offenders == []


def test_drawing_leaves_the_backend_and_pyplot_alone(tmp_path: pathlib.Path) -> None:
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend hetsurgery would not pick
    try:
        _draw_everything(tmp_path)
    finally:
        matplotlib.use(before)


def _draw_everything(tmp_path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    plt.close("all")
    curve = Curve((0.0, 0.5, 1.0), (1.0, 2.0, 1.5), (0.9, 0.5, 0.8))
    assert plot_curves({"a": curve}, tmp_path / "curves.png").stat().st_size > 1000
    st = align_stage("s", "s", ["a"], ["b", "c"], [[0.5, 0.9]], DepthMethod.LMA, Balance.ADD)
    assert cka_heatmap(DepthPlan(0, (ModelDepth(1, (st,)),)), tmp_path / "cka.png").stat().st_size > 1000
    x = torch.randn(32, 64)
    t = hs.find_lambda_threshold(hs.zoo.mlp([8]), hs.zoo.mlp([8]), [(x, torch.zeros(32).long())], layers="all",
                                 lambdas=(0.0, 1.0), refine=0, verify=1, plot=tmp_path / "lam.png")
    assert t.plot is not None and t.plot.stat().st_size > 1000
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
