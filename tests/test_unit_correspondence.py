"""Balanced models correspond unit by unit by what their units compute, not by how many fx nodes they have:
a ResNet whose blocks call an ``nn.Identity()`` shortcut (a node of its own) merges with a shallower one whose
zero-residual blocks, derived from a lone strided block, have a bare shortcut (Xu et al.'s (3, 3) / (2, 1)
pairs)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.merging.correspond import on_anchor_names
from hetsurgery.passes import InsertZeroResidual
from tests.helpers import randomise, rel_err
from tests.outside_models import StageResNet


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("depth", ["cla", "sma", "lma"])
def test_a_stage_of_one_strided_block_balances_and_merges(depth: str, width: int) -> None:
    torch.manual_seed(0)
    deep, shallow = (randomise(StageResNet(blocks, width, base=4), seed) for blocks, seed in (((3, 3), 1), ((2, 1), 2)))
    x = torch.randn(32, 1, 8, 8)
    # all the weight on the shallow model, no BatchNorm reset: the merge is the balanced shallow model, exactly
    r = hs.merge([deep, shallow], [x], method="permute", depth=depth, weights=[0, 1], reset_bn=False, progress=False)
    with torch.no_grad():
        assert rel_err(shallow(x), r.model(x)) < 1e-5
    assert set(r.model.state_dict()) == set(deep.state_dict())  # the deep model's structure and names
    zipped = hs.merge([deep, shallow], [x], method="zip", depth=depth, progress=False)
    with torch.no_grad():
        assert bool(torch.isfinite(zipped.model(x)).all())


def test_identity_modules_are_looked_through_either_way() -> None:
    """The anchor may be the model with the bare shortcuts: the shallow model's ``nn.Identity`` nodes pair with
    nothing, and its tensors land under the anchor's names computing what they computed."""
    x = torch.randn(8, 1, 8, 8)
    shallow = hs.trace(randomise(StageResNet((2, 1), base=4), 3), x)
    derived = InsertZeroResidual("stage1", (1, 1))(shallow)  # bare shortcuts in the two new blocks
    deep = hs.trace(randomise(StageResNet((2, 3), base=4), 4), x)  # nn.Identity shortcuts there
    assert len(list(deep.module.graph.nodes)) == len(list(derived.module.graph.nodes)) + 2
    carried = on_anchor_names(derived, deep)
    with torch.no_grad():
        assert rel_err(hs.to_module(deep)(x), hs.to_module(carried)(x)) < 1e-6
    assert set(carried.params) == set(derived.params)


def test_units_that_compute_different_things_are_refused_with_the_node() -> None:
    """A dropout of rate 0.5 is no identity: the shortcut that has one does not pair with one that has none."""
    x = torch.randn(8, 1, 8, 8)
    model = StageResNet((2, 2), base=4)
    other = copy.deepcopy(model)
    other.features[1].shortcut = nn.Dropout(0.5)
    with pytest.raises(hs.MergeInputError, match=r"node features_1_shortcut is torch.nn.modules.dropout.Dropout\(.*"
                                                 r"do not compute the same kind of thing"):
        on_anchor_names(hs.trace(model, x), hs.trace(other, x))
    other.features[1].shortcut = nn.Dropout(0.0)  # returns its input: looked through
    assert on_anchor_names(hs.trace(model, x), hs.trace(other, x)).params.keys() == hs.trace(model, x).params.keys()
