"""``RemoveBlock`` undoes ``InsertZeroResidual`` exactly (ResNet, transformer), removes a real block with a
measurable change, and refuses layers, shape-changing blocks and emptying a stage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import randomise, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import InsertZeroResidual, RemoveBlock

X = torch.randn(8, 1, 8, 8)
MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": lambda: hs.zoo.resnet((2, 2, 1)),
    "transformer": lambda: hs.zoo.transformer("manual", depth=2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removing_an_inserted_zero_residual_block_gives_the_model_back(name: str) -> None:
    model = randomise(MODELS[name](), 1)
    g = hs.trace(model, X[:2])
    deeper = InsertZeroResidual("stage0", (1,))(g)
    new = next(u.key for u in deeper.units if u.origin == "insert-zero-residual")
    back = RemoveBlock((new,))(deeper)
    assert back.stage("stage0").units == g.stage("stage0").units
    assert set(back.params) == set(g.params)
    with torch.no_grad():
        assert rel_err(model(X), hs.to_module(back)(X)) == 0.0
    assert back.passes[-1] == RemoveBlock((new,)) and back.passes[-1].spec() == {"pass": "remove-block", "units": [new]}


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_removing_consecutive_blocks_in_any_order(name: str, backwards: bool) -> None:
    model = randomise(MODELS[name](), 3)
    g = hs.trace(model, X[:2])
    deeper = InsertZeroResidual("stage0", (1, 1, 2))(g)
    new = [u.key for u in deeper.units if u.origin == "insert-zero-residual"]
    assert len(new) == 3
    back = RemoveBlock(tuple(reversed(new) if backwards else new))(deeper)  # each one reads the previous one's output
    assert back.stage("stage0").units == g.stage("stage0").units
    with torch.no_grad():
        assert rel_err(model(X), hs.to_module(back)(X)) == 0.0


def test_removing_a_real_block_changes_the_function_by_its_branch() -> None:
    model = randomise(hs.zoo.resnet((3, 1, 1)), 2)
    g = hs.trace(model, X[:2])
    out = RemoveBlock(("layer1_1_conv1",))(g)
    assert out.stage("stage0").units == ("layer1_0_conv1", "layer1_2_conv1")
    assert not any(name.startswith("layer1.1.") for name in out.params)
    with torch.no_grad():
        assert rel_err(model(X), hs.to_module(out)(X)) > 1e-3
    assert not RemoveBlock.exact


@pytest.mark.parametrize(("units", "says"), [
    (("conv1",), "is a layer, not a residual block"),
    (("layer2_0_conv1",), "cannot be bypassed: it reads another group or shape"),
    (("layer1_0_conv1", "layer1_1_conv1"), "would empty stage stage0"),
    (("nope",), "no unit 'nope'"),
])
def test_remove_block_refuses_what_it_cannot_bypass(units: tuple[str, ...], says: str) -> None:
    g = hs.trace(hs.zoo.resnet((2, 2, 1)), X[:2])
    with pytest.raises(hs.HetsurgeryError, match=says):
        RemoveBlock(units)(g)
