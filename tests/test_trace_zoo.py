"""Every zoo model traces, permutes exactly (BN statistics randomised) and is understood (coverage)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_permutation_invariant

import hetsurgery as hs

DIGITS = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
CIFAR = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

ZOO = {
    "mlp": lambda: hs.zoo.mlp([32, 24]),
    "mlp-bn": lambda: hs.zoo.mlp([32, 24], batch_norm=True),
    "vgg": lambda: hs.zoo.vgg(),
    "vgg-nobn": lambda: hs.zoo.vgg(batch_norm=False),
    "resnet20": lambda: hs.zoo.resnet20(in_channels=1),
    "resnet26-pad": lambda: hs.zoo.resnet26(in_channels=1, shortcut="pad"),
    "transformer-mha": lambda: hs.zoo.transformer("mha"),
    "transformer-manual": lambda: hs.zoo.transformer("manual"),
    "transformer-sdpa": lambda: hs.zoo.transformer("sdpa"),
    "densenet": lambda: hs.zoo.densenet(),
    "mobilenet": lambda: hs.zoo.mobilenet(),
}
COVERED = ["mlp", "mlp-bn", "vgg", "vgg-nobn", "resnet20", "resnet26-pad", "densenet", "mobilenet", "transformer-manual",
           "transformer-sdpa"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_random_permutation_preserves_function(name: str) -> None:
    g = assert_permutation_invariant(ZOO[name](), DIGITS)
    assert any(grp.perm_ok for grp in g.groups)


@pytest.mark.parametrize("name", COVERED)
def test_coverage_at_least_95_percent(name: str) -> None:
    g = hs.trace(ZOO[name](), DIGITS)
    assert g.coverage() >= 0.95, g.summary()


@pytest.mark.parametrize("attention", ["mha", "manual", "sdpa"])
def test_transformer_keeps_stream_mlp_and_heads(attention: str) -> None:
    model = hs.zoo.transformer(attention, dim=32, heads=4)
    g = hs.trace(model, DIGITS)
    stream = next(grp for grp in g.groups if any(s.param == "pos" for s in grp.slots))
    hidden = [grp for grp in g.groups if any(s.param.endswith("fc1.weight") and s.dim == 0 for s in grp.slots)]
    heads = [grp for grp in g.groups if grp.structure.count == 4]
    assert stream.perm_ok and stream.structure.count == 1
    assert hidden and all(grp.perm_ok and grp.structure.count == 1 for grp in hidden)
    assert len(heads) == 2 * 2  # q/k and v groups of two blocks
    assert all(grp.perm_ok and grp.structure.size == 8 for grp in heads)


def test_cifar_sized_inputs() -> None:
    assert_permutation_invariant(hs.zoo.resnet20(width=1, in_channels=3), CIFAR)
    assert_permutation_invariant(hs.zoo.vgg("vgg11", width=0.125, in_channels=3, image_size=32), CIFAR)


def test_only_output_group_frozen_in_resnet() -> None:
    g = hs.trace(hs.zoo.resnet20(in_channels=1), DIGITS)
    frozen = [grp for grp in g.groups if not grp.perm_ok]
    assert [grp.frozen for grp in frozen] == ["model output"]
    assert all(grp.by_design for grp in frozen)
    # three residual streams, nine inner block groups, the output
    assert sorted(grp.size for grp in g.groups if len(grp.slots) > 6) == [16, 32, 64]
