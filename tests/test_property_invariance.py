"""Property: any generated MLP / CNN / residual net keeps its function under random permutations."""

from __future__ import annotations

import torch
from helpers import assert_permutation_invariant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hetsurgery as hs

widths = st.lists(st.integers(1, 12), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=widths, batch_norm=st.booleans(), seed=st.integers(0, 1000))
def test_mlp(hidden: list[int], batch_norm: bool, seed: int) -> None:
    torch.manual_seed(seed)
    assert_permutation_invariant(hs.zoo.mlp(hidden, in_features=6, num_classes=3, batch_norm=batch_norm),
                                 torch.randn(5, 6), seed=seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=st.lists(st.one_of(st.integers(1, 8), st.just("M")), min_size=1, max_size=5),
       batch_norm=st.booleans(), seed=st.integers(0, 1000))
def test_cnn(cfg: list, batch_norm: bool, seed: int) -> None:
    cfg = [c for i, c in enumerate(cfg) if c != "M" or cfg[:i].count("M") < 2]
    if not any(c != "M" for c in cfg):
        cfg = [4, *cfg]
    torch.manual_seed(seed)
    model = hs.zoo.vgg(cfg, batch_norm=batch_norm, in_channels=2, num_classes=3, image_size=8, hidden=5)
    assert_permutation_invariant(model, torch.randn(3, 2, 8, 8), seed=seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.integers(1, 2), min_size=3, max_size=3), shortcut=st.sampled_from(["conv", "pad"]),
       seed=st.integers(0, 1000))
def test_resnet(blocks: list[int], shortcut: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = hs.zoo.resnet(blocks, 1, shortcut, in_channels=1, num_classes=3)
    assert_permutation_invariant(model, torch.randn(2, 1, 8, 8), seed=seed)


class Residual(nn.Module):
    """Generated residual net: per block a choice of join (add / mul / cat) and activation."""

    def __init__(self, width: int, joins: list[str], acts: list[str]) -> None:
        super().__init__()
        self.joins = joins
        self.stem = nn.Conv2d(2, width, 3, padding=1)
        self.convs = nn.ModuleList()
        self.acts = nn.ModuleList(
            {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh(), "silu": nn.SiLU()}[a] for a in acts)
        c = width
        for j in joins:
            self.convs.append(nn.Sequential(nn.Conv2d(c, c if j != "cat" else width, 3, padding=1),
                                            nn.BatchNorm2d(c if j != "cat" else width)))
            c = c + width if j == "cat" else c
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for join, conv, act in zip(self.joins, self.convs, self.acts, strict=True):
            y = act(conv(x))
            x = x + y if join == "add" else x * y if join == "mul" else torch.cat([x, y], 1)
        return self.head(x.mean(dim=(2, 3)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 6), joins=st.lists(st.sampled_from(["add", "mul", "cat"]), min_size=1, max_size=4),
       data=st.data(), seed=st.integers(0, 1000))
def test_residual(width: int, joins: list[str], data: st.DataObject, seed: int) -> None:
    acts = data.draw(st.lists(st.sampled_from(["relu", "gelu", "tanh", "silu"]), min_size=len(joins),
                              max_size=len(joins)))
    torch.manual_seed(seed)
    assert_permutation_invariant(Residual(width, joins, acts), torch.randn(2, 2, 5, 5), seed=seed)
