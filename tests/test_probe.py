"""The equivariance probe: an op no rule knows passes its channels through when it commutes with permutations
of them on the example, and freezes them otherwise (random, in-place, stateful, mixing or opaque ops)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_permutation_invariant
from torch import nn

import hetsurgery as hs


class Swish(nn.Module):
    """A stateless module outside torch.nn, kept opaque as a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Scaled(nn.Module):
    """A leaf module with a buffer: state the probe cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Net(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.swish, self.scaled = Swish(), Scaled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "expit":
            h = torch.special.expit(h)  # elementwise, and no rule knows it
        elif self.how == "leaf":
            h = self.swish(h)
        elif self.how == "logcumsumexp":
            h = torch.logcumsumexp(h, dim=-1)  # runs along the channels
        elif self.how == "rrelu":
            h = F.rrelu(h, training=True)  # draws random numbers
        elif self.how == "exp_":
            h = h.exp_()  # updates its input in place
        else:
            h = self.scaled(h)
        return self.b(h)


@pytest.mark.parametrize(("how", "passes", "why"), [
    ("expit", True, ""), ("leaf", True, ""), ("logcumsumexp", False, "does not follow a permutation"),
    ("rrelu", False, "draws random numbers"), ("exp_", False, "changes its input in place"),
    ("buffer", False, "holds parameters or buffers")])
def test_the_probe_passes_only_ops_that_commute_with_permutations(how: str, passes: bool, why: str) -> None:
    leaves = (Swish, Scaled)
    x = torch.randn(4, 3)
    if how == "rrelu":  # random: permuting changes the output; only the frozen groups keep it exact
        g = hs.trace(Net(how).eval(), x, leaf_modules=leaves)
    else:
        g = assert_permutation_invariant(Net(how), x, leaf_modules=leaves)
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.perm_ok is passes
    if passes:
        assert "probed" in a.label and not a.pad_ok and a.zip_ok
    else:
        assert a.frozen is not None and "do not know" in a.frozen and why in a.frozen


def test_probe_false_freezes_without_probing() -> None:
    g = assert_permutation_invariant(Net("expit"), torch.randn(4, 3), probe=False)
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.frozen is not None and "expit" in a.frozen and "probe" not in a.frozen


def test_the_probe_passes_an_op_on_concatenated_and_flattened_channels() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 3, 1), nn.Linear(5 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.cat([self.a(x), self.b(x)], 1).flatten(1)
            return self.c(torch.special.expit(h))  # segments of 2 and 3 channels, 4 entries each

    g = assert_permutation_invariant(Cat(), torch.randn(3, 1, 2, 2))
    assert all(grp.perm_ok for grp in g.groups if not grp.by_design)
    assert sum("probed" in grp.label for grp in g.groups) == 2
