"""Partial zipping (``stop_at``): the trunk merged, each model's tail kept. Cut before the first unit it is the
output ensemble, cut after the last it is the full merge, exactly; the model saves as a package and exports to
ONNX with the parity check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.evaluate import Ensemble
from hetsurgery.export import load, to_onnx
from tests.helpers import permuted, randomise, rel_err

PAIRS = {
    "mlp, widths": (lambda: hs.zoo.mlp([12, 10]), lambda: hs.zoo.mlp([16, 8]), (64,), {}),
    "resnet, depths": (lambda: hs.zoo.resnet((2, 2, 2)), lambda: hs.zoo.resnet((1, 1, 1)), (1, 8, 8),
                       {"depth": "lma"}),
    "vgg, depths": (lambda: hs.zoo.vgg([6, 6, "M", 8, 8], hidden=12), lambda: hs.zoo.vgg([6, "M", 8], hidden=12),
                    (1, 8, 8), {"depth": "sma"}),
}


def _pair(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, dict]:
    make_a, make_b, shape, kw = PAIRS[name]
    return randomise(make_a(), 1), randomise(make_b(), 2), torch.randn(48, *shape), kw


@pytest.mark.parametrize("name", PAIRS)
def test_the_two_ends_are_the_ensemble_and_the_full_merge(name: str) -> None:
    a, b, x, kw = _pair(name)
    full = hs.merge([a, b], [x], method="zip", progress=False, **kw)
    units = len(full.graph.units)
    none = hs.merge([a, b], [x], method="zip", stop_at=0, progress=False, **kw)
    everything = hs.merge([a, b], [x], method="zip", stop_at=units, progress=False, **kw)
    with torch.no_grad():
        assert rel_err(Ensemble([a, b])(x), none.model(x)) < 1e-5
        assert rel_err(full.model(x), everything.model(x)) < 1e-6
    assert none.report.partial is not None and none.report.partial.trunk == 0
    assert everything.report.partial is not None and everything.report.partial.tails == 0
    assert set(everything.model.state_dict()) == set(full.model.state_dict())  # the full merge's names


def test_a_cut_inside_keeps_each_tail_and_names_it() -> None:
    a, b, x, kw = _pair("resnet, depths")
    r = hs.merge([a, b], [x], method="zip", stop_at="stage1", heads="separate", progress=False, **kw)
    p = r.report.partial
    assert p is not None and p.last == "layer2_1_conv1" and "partial zip: 5 of 8 units merged" in str(r.report)
    ya, yb = r.model(x)
    assert ya.shape == yb.shape == (48, 10)
    combined = hs.merge([a, b], [x], method="zip", stop_at="layer2_1_conv1", progress=False, **kw)
    with torch.no_grad():
        assert torch.allclose(combined.model(x), (ya + yb) / 2, atol=1e-6)
    names = set(r.model.state_dict())
    assert {"tails.0.layer3.1.conv1.weight", "tails.1.layer3.0.conv1.weight"} <= names
    assert not any(n.startswith("tails.1.layer3.1.") for n in names)  # the inserted block is left out of B's tail
    assert "layer1.0.conv1.weight" in names and not any(n.startswith("layer3.") for n in names)


def test_a_partially_zipped_model_saves_and_exports(tmp_path: Path) -> None:
    a, b, x, kw = _pair("resnet, depths")
    r = hs.merge([a, b], [x], method="zip", stop_at=4, progress=False, **kw)
    folder = r.save(tmp_path / "pkg")
    assert "partial zip: 4 of 8 units merged" in (folder / "report.md").read_text()
    with torch.no_grad():
        assert rel_err(r.model(x), load(folder)(x)) < 1e-6
    report = to_onnx(r.graph, x[:4], tmp_path / "model.onnx")
    assert report.passed


@pytest.mark.parametrize(("stop_at", "message"), [
    (99, "stop_at=99: the models have 8 units"),
    ("layer9", "stop_at='layer9' is no unit or stage"),
    (-1, "stop_at must be a number of units"),
])
def test_cuts_the_models_do_not_have_are_refused(stop_at: object, message: str) -> None:
    a, b, x, kw = _pair("resnet, depths")
    with pytest.raises(hs.MergeInputError, match=message):
        hs.merge([a, b], [x], method="zip", stop_at=stop_at, progress=False, **kw)


def test_separate_heads_need_a_cut() -> None:
    with pytest.raises(hs.MergeInputError, match="heads='separate' needs stop_at="):
        hs.MergeOptions.of(heads="separate")


@pytest.mark.parametrize("stop_at", [1, 3, 5])
def test_a_model_partially_zipped_with_its_permuted_copy_is_the_model(stop_at: int) -> None:
    """The merged trunk computes the model's own features in a permuted order; the fitted unmerge puts them back
    (no BatchNorm reset: the statistics stay the model's)."""
    model, x = randomise(hs.zoo.resnet((2, 2, 2)), 3), torch.randn(64, 1, 8, 8)
    copy = hs.to_module(permuted(hs.trace(model, x[:2]), 4))
    r = hs.merge([model, copy], [x], method="permute", stop_at=stop_at, reset_bn=False, progress=False)
    assert r.report.partial is not None and r.report.partial.unmerge > 0
    with torch.no_grad():
        assert rel_err(model(x), r.model(x)) < 1e-4
