"""Inside a block that depth balancing inserted into the shallower model, the merged block is the deeper model's
(Xu et al.'s W* = P_A W_A + P_B 0): the inserted copy's inner weights take no part, the block's output is weighed as
the stream is."""

from __future__ import annotations

import torch

import hetsurgery as hs
from hetsurgery.merging.inserted import inserted_units, interior_groups
from tests.helpers import randomise


def test_an_inserted_blocks_interior_is_the_deep_models_own() -> None:
    deep, shallow = randomise(hs.zoo.resnet((2, 1, 1)), 1), randomise(hs.zoo.resnet((1, 1, 1)), 2)
    x = torch.randn(32, 1, 8, 8)
    r = hs.merge([deep, shallow], [x], method="permute", depth="lma", reset_bn=False, progress=False)
    assert r.depth is not None and inserted_units(r.depth, 1) == {"layer1_1_conv1"}
    params, own = r.model.state_dict(), deep.state_dict()
    assert torch.equal(params["layer1.1.conv1.weight"], own["layer1.1.conv1.weight"])  # the anchor is not moved
    for name in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert torch.equal(params[f"layer1.1.{name}"], own[f"layer1.1.{name}"])
    for name in ("conv2.weight", "bn2.weight", "bn2.bias"):  # the output: the stream's weight, 1/2
        assert torch.allclose(params[f"layer1.1.{name}"], own[f"layer1.1.{name}"] / 2)
    labels = {label: how for _, label, _, _, how in r.report.groups}
    assert labels["layer1_1_conv1"] == "alone" and labels["layer1_0_conv1"] == "permutation"


def test_zipped_at_other_widths_the_interior_keeps_the_deep_models_width() -> None:
    deep, shallow = randomise(hs.zoo.resnet((2, 1, 1)), 1), randomise(hs.zoo.resnet((1, 1, 1), 2), 2)
    x = torch.randn(32, 1, 8, 8)
    r = hs.merge([deep, shallow], [x], method="zip", depth="sma", progress=False)
    g = r.graph
    inner = interior_groups(g, g.unit("layer1_1_conv1"))
    assert [grp.size for grp in inner] == [16]  # the deep model's width, not the zip's 32
    assert r.plan.groups[inner[0].id].kind == "alone"
