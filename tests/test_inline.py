"""Wrapped functions (``torch.fx.wrap``) are inlined: traced again with the example values, kept whole when
they cannot be (data-dependent branches), and never changed in what they compute."""

from __future__ import annotations

import torch
from helpers import assert_permutation_invariant, rel_err
from torch import nn

import hetsurgery as hs


def zero_middle_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SwinV2's trick: a copy of the bias with its middle third zeroed in place, then the projection."""
    bias = bias.clone()
    third = bias.numel() // 3
    bias[third:2 * third].zero_()
    if x.shape[-1] > 1:  # a branch on sizes: plain fx cannot trace this
        x = x * 1.0
    return torch.nn.functional.linear(x, weight, bias)


torch.fx.wrap("zero_middle_bias")


class Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.qkv, self.b = nn.Linear(3, 4), nn.Linear(4, 6), nn.Linear(6, 2)
        nn.init.normal_(self.qkv.bias)  # a middle third that is not zero already: zeroing it shows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(zero_middle_bias(torch.relu(self.a(x)), self.qkv.weight, self.qkv.bias))


def test_an_in_place_update_inside_an_inlined_function_is_kept() -> None:
    model = Projection().eval()
    x = torch.randn(5, 3)
    g = hs.trace(model, x)
    assert not any(n.target is zero_middle_bias for n in g.module.graph.nodes)  # inlined
    assert "zero_" in [n.target for n in g.module.graph.nodes]
    with torch.no_grad():
        assert rel_err(model(x), hs.to_module(g)(x)) == 0.0
        assert rel_err(model(torch.cat([x, x])), hs.to_module(g)(torch.cat([x, x]))) == 0.0
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.perm_ok  # the branch on sizes is gone; the input passes through the inlined projection


def test_inlining_keeps_the_batch_size_free() -> None:
    import outside_models as om

    g = assert_permutation_invariant(om.TinySwin(), torch.randn(2, 1, 8, 8))
    with torch.no_grad():
        assert hs.to_module(g)(torch.randn(5, 1, 8, 8)).shape == (5, 10)
