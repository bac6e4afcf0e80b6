"""Ops the rules do not know, and the equivariance probe does not pass, freeze every group they touch, with a
reason, and invariance still holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_permutation_invariant
from torch import nn

import hetsurgery as hs


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(dim=1) ** 3  # mixes channels: a permutation would break it

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


def cube_mix(x: torch.Tensor) -> torch.Tensor:
    """A kernel outside torch (numpy here): neither fx nor the inliner sees into it, and it mixes channels."""
    return torch.from_numpy(np.cumsum(x.detach().numpy(), axis=1) ** 3)


torch.fx.wrap("cube_mix")  # one opaque node, as a custom kernel would be


class WithFunction(nn.Module):
    def __init__(self, wrapped: bool) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.a, self.b, self.c = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        y = cube_mix(self.b(h)) if self.wrapped else Cube.apply(self.b(h))
        return self.c(torch.relu(y))


class WithFFT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        f = torch.fft.fft2(self.b(h)).real
        return self.fc(f.mean(dim=(2, 3)))


@pytest.mark.parametrize(("wrapped", "culprit"), [(True, "cube_mix"), (False, "Tensor.cumsum")])
def test_custom_autograd_function_freezes_its_groups(wrapped: bool, culprit: str) -> None:
    # fx traces into Function.forward unless the call is wrapped; either way the unknown op is named
    g = assert_permutation_invariant(WithFunction(wrapped), torch.randn(4, 5))
    b = next(grp for grp in g.groups if hs.Slot("b.weight", 0) in grp.slots)
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert b.frozen is not None and culprit in b.frozen and "do not know" in b.frozen
    assert not b.by_design
    assert a.perm_ok  # untouched groups stay free
    assert g.coverage() < 1.0  # what the tool gave up on is counted against it


def test_fft_freezes_its_groups_without_the_probe() -> None:
    g = assert_permutation_invariant(WithFFT(), torch.randn(3, 2, 5, 5), probe=False)
    b = next(grp for grp in g.groups if hs.Slot("b.weight", 0) in grp.slots)
    assert b.frozen is not None and "fft2" in b.frozen and "probe" not in b.frozen
    assert next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots).perm_ok


def test_fft_over_the_spatial_dims_passes_the_probe() -> None:
    # fft2 transforms each channel's map on its own (and .real reads each entry): both commute with a
    # permutation of the channels, which the probe sees
    g = assert_permutation_invariant(WithFFT(), torch.randn(3, 2, 5, 5))
    b = next(grp for grp in g.groups if hs.Slot("b.weight", 0) in grp.slots)
    assert b.perm_ok and "probed function torch._C._fft.fft_fft2" in b.label and not b.pad_ok
    assert g.coverage() == 1.0


def test_unknown_leaf_module_freezes_and_distrusts_its_parameters() -> None:
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w.t() + x.flip(-1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.mix, self.c = nn.Linear(4, 8), Mixer(), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.mix(torch.relu(self.a(x))))

    g = assert_permutation_invariant(Net(), torch.randn(3, 4), leaf_modules=(Mixer,))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.frozen is not None and "'mix'" in a.frozen


def test_traced_through_mixer_is_frozen_by_flip() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.c(h + h.flip(-1))

    g = assert_permutation_invariant(Net(), torch.randn(3, 4))
    assert all(not grp.perm_ok for grp in g.groups)
