"""A merge is right or refused: models that compute different things with weights of the same shapes are
refused with the reason, and merge weights of zero give the other model back instead of NaN."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from helpers import randomise, rel_err
from torch import nn

import hetsurgery as hs

DATA = [torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("attention", ["mha", "manual", "sdpa"])
def test_attention_with_different_head_counts_is_refused(attention: str) -> None:
    a, b = hs.zoo.transformer(attention, heads=4), hs.zoo.transformer(attention, heads=8)
    with pytest.raises(hs.MergeInputError, match=r"num_heads=4.*num_heads=8|4 blocks of 8.*8 blocks of 4|0\.35.*0\.5"):
        hs.merge([a, b], DATA, method="permute", progress=False)


class Chain(nn.Module):
    def __init__(self, act: nn.Module, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=stride, padding=1)
        self.act = act
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize(("other", "says"), [(Chain(nn.GELU()), "GELU"), (Chain(nn.ReLU(), stride=2), "stride"),
                                             (Chain(nn.LeakyReLU(0.2)), "negative_slope")])
def test_layers_with_other_settings_are_refused(other: nn.Module, says: str) -> None:
    with pytest.raises(hs.MergeInputError, match=f"node act|node conv.*{says}|{says}.*node conv"):
        hs.merge([Chain(nn.ReLU()), other], DATA, method="permute", progress=False)


@pytest.mark.parametrize("method", ["average", "permute", "weight", "ot", "zip", "mal", "mal-pad"])
@pytest.mark.parametrize("factory", [lambda: hs.zoo.mlp([16, 12]), lambda: hs.zoo.resnet((1, 1, 1)),
                                     lambda: hs.zoo.transformer("manual", depth=1)], ids=["mlp", "resnet", "vit"])
def test_a_zero_weight_gives_the_other_model_carried_into_the_merged_space(method: str,
                                                                         factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(3)
    a, b = randomise(factory(), 1), randomise(factory(), 2)
    x = torch.randn(16, 1, 8, 8)
    for weights, ref in (([0, 2.5], b), ([1, 0], a)):
        merged = hs.merge([a, b], DATA, method=method, weights=weights, reset_bn=False, progress=False).model
        with torch.no_grad():
            y = merged(x)
            assert bool(torch.isfinite(y).all()), (method, weights)
            assert rel_err(ref(x), y) <= 1e-5, (method, weights, rel_err(ref(x), y))


@pytest.mark.parametrize("weights", [[-1, 2], [0, 0], [math.nan, 1], [math.inf, 1], [1, 2, 3], ["1", 1], [True, 1]])
def test_bad_merge_weights_are_refused(weights: list) -> None:
    with pytest.raises(hs.MergeInputError, match="weights must be 2 non-negative numbers with a positive sum"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([8])], [torch.randn(8, 64)], method="zip", weights=weights,
                 progress=False)


def test_zip_with_a_zero_weight_keeps_the_live_model_whole_at_its_width() -> None:
    """Width of the live model or more: exact. Narrower: the live model's own features are zipped (an
    approximation, as any zip to a smaller width), never NaN."""
    torch.manual_seed(4)
    a, b = hs.zoo.mlp([32, 24]).eval(), hs.zoo.mlp([48, 16]).eval()
    x = torch.randn(32, 64)
    for width, exact in (("max", True), (1, True), ("min", False)):
        merged = hs.merge([a, b], [torch.randn(128, 64)], method="zip", weights=[0, 1], width=width,
                          reset_bn=False, progress=False).model
        with torch.no_grad():
            err = rel_err(b(x), merged(x))
        assert math.isfinite(err) and (err <= 1e-5) == exact, (width, err)


def test_dict_batches_that_do_not_name_the_model_inputs_are_refused_with_the_reason_before_a_model_runs() -> None:
    batches = [{"pixel_values": torch.randn(4, 64), "labels": torch.zeros(4, dtype=torch.long)}]
    with pytest.raises(hs.InvalidInput, match=r"model 0 \(MLP\): the example inputs \(pixel_values\) do not fit its "
                                              r"forward\(x: 'torch.Tensor'\).*unexpected keyword argument 'pixel_values'"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([8])], batches, method="zip", progress=False)
