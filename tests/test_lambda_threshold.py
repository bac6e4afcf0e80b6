"""``find_lambda_threshold``: the largest λ whose base-task accuracy (or loss) stays within tolerance, checked
against every point it evaluated; a donor that computes the base's function never breaks it; the picture."""

from __future__ import annotations

import itertools
import pathlib

import pytest
import torch
from helpers import permuted

import hetsurgery as hs
from hetsurgery.assembly import LambdaThreshold
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, list, list]:
    torch.manual_seed(0)
    base = train(hs.zoo.mlp([32, 32]), digits("train", TASKS[0]), epochs=6, seed=0)
    torch.manual_seed(1)
    donor = train(hs.zoo.mlp([48, 24]), digits("train", TASKS[1]), epochs=6, seed=1)
    return base, donor, list(loader(digits("test", TASKS[0]))), list(loader(digits("train"), 256))


def _check(t: LambdaThreshold) -> None:
    """Every point evaluated up to the threshold is within tolerance, the next one evaluated is not; the grid and
    the verification points below the threshold were evaluated."""
    assert t.probes[0] == (0.0, t.base_value)
    assert all(t.within(v) for lam, v in t.probes if lam <= t.threshold)
    above = [v for lam, v in t.probes if lam > t.threshold]
    assert not above or not t.within(above[0])
    lams = {lam for lam, _ in t.probes}
    assert set(t.curve.lambdas) <= lams
    below = sorted(lam for lam in lams if lam <= t.threshold)
    assert len(below) >= 21 or t.threshold == 0  # λ = 0 and at least 20 verification points
    assert max(b - a for a, b in itertools.pairwise(below)) <= 0.005 + 1e-12 or t.threshold == 0


def test_the_threshold_keeps_the_base_task_within_one_point(pair: tuple, tmp_path: pathlib.Path) -> None:
    base, donor, test, calib = pair
    t = hs.find_lambda_threshold(base, donor, test, layers="all", calibration=calib, plot=tmp_path / "lam.png")
    _check(t)
    assert 0.0 < t.threshold < 1.0  # a donor trained on other digits breaks the base task somewhere
    assert t.base_value == pytest.approx(hs.evaluate.accuracy(base, test))
    assert len(t.curve.lambdas) == 21 and len(t.probes) >= 21 + 6 + 20
    assert t.barrier == pytest.approx(max(t.curve.loss) - 0.5 * (t.curve.loss[0] + t.curve.loss[-1]))
    assert t.plot is not None and t.plot.stat().st_size > 10_000
    assert [u.unit for u in t.units] == ["layers_0", "layers_2", "layers_4"]


def test_the_threshold_on_the_loss_and_of_one_layer(pair: tuple) -> None:
    base, donor, test, calib = pair
    t = hs.find_lambda_threshold(base, donor, test, layers=["layers_0"], metric="loss", tolerance=0.05,
                                 calibration=calib, lambdas=(0.0, 0.25, 0.5, 0.75, 1.0), refine=3)
    _check(t)
    assert t.metric.value == "loss" and t.base_value == t.curve.loss[0]


def test_a_donor_that_computes_the_base_never_breaks_it(pair: tuple) -> None:
    base, _, test, calib = pair
    twin = hs.to_module(permuted(hs.trace(base, calib[0][0][:2]), 3)).eval()
    t = hs.find_lambda_threshold(base, twin, test, layers="all", calibration=calib, lambdas=(0.0, 0.5, 1.0))
    assert t.threshold == 1.0 and abs(t.barrier) < 1e-5


@pytest.mark.parametrize(("kw", "says"), [
    ({"metric": "f1"}, "metric must be one of accuracy, loss"),
    ({"tolerance": -1}, "tolerance must be a non-negative number"),
    ({"lambdas": (0.0, 1.5)}, "lambdas must lie in \\[0, 1\\]"),
    ({"resolution": 0}, "resolution must be a positive spacing"),
    ({"layers": ["x"]}, "'x', which is not a unit of the base"),
])
def test_bad_threshold_input(pair: tuple, kw: dict, says: str) -> None:
    base, donor, test, _ = pair
    with pytest.raises(hs.MergeInputError, match=says):
        hs.find_lambda_threshold(base, donor, test, **{"layers": "all", **kw})


def test_a_copy_of_the_base_gives_a_flat_curve_with_the_default_batchnorm_reset() -> None:
    """λ = 0 is evaluated with the same BatchNorm reset as every other λ: a donor that computes the base's
    function gives one value along the whole curve (it jumped between 0 and 0.005 by the reset alone)."""
    from helpers import randomise

    from hetsurgery.passes import InsertZeroResidual

    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    data = [(x, torch.randint(0, 10, (64,)))]
    base = randomise(hs.zoo.resnet((1, 1, 1)), 5)
    donor = hs.to_module(permuted(InsertZeroResidual("stage0", (1,))(hs.trace(base, x[:2])), 6)).eval()
    t = hs.find_lambda_threshold(base, donor, data, layers="all", metric="loss", tolerance=1e-4, depth="lma",
                                 lambdas=(0.0, 0.005, 0.5, 1.0), refine=0, verify=2, resolution=0.25)
    assert t.threshold == 1.0
    assert all(abs(v - t.base_value) <= 1e-4 * abs(t.base_value) for _, v in t.probes)
