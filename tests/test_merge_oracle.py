"""Oracle: merging a model with a randomly permuted copy of itself gives back the original function."""

from __future__ import annotations

import outside_models as om
import pytest
import torch
from helpers import randomise_calibrated, rel_err

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations

X = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))
DATA = [X[i:i + 32] for i in range(0, 96, 32)]

MODELS = {
    "mlp": lambda: hs.zoo.mlp([32, 24]),
    "vgg": lambda: hs.zoo.vgg(),
    "resnet": lambda: hs.zoo.resnet((2, 1, 1)),
    "densenet": lambda: hs.zoo.densenet((2, 2)),
    "mobilenet": lambda: hs.zoo.mobilenet(((8, 1, 1), (16, 2, 2))),
    "transformer-mha": lambda: hs.zoo.transformer("mha", depth=1),
    "transformer-manual": lambda: hs.zoo.transformer("manual", depth=1),
    # the patterns of issue 12: fused qkv (chunk, unbind), shuffle, windows, layer scale, SE, stochastic depth
    "convnext": om.TinyConvNeXt,
    "swin": om.TinySwin,
    "shufflenet": om.TinyShuffleNet,
    "efficientnet": om.TinyEfficientNet,
    "chunk-vit": om.ChunkViT,
    "maxvit": om.TinyMaxViT,
    "fused-qkv-vit": om.FusedQKVViT,
}


def permuted_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = hs.trace(model, X[:2])
    copy = hs.to_module(ApplyPermutation(random_permutations(g, seed))(g)).eval()
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values(),
                                                       strict=True))
    return copy


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["permute", "weight", "ot", "ot-weights", "zip", "mal", "mal-pad"])
def test_merge_with_permuted_self_is_identity(name: str, method: str) -> None:
    model = randomise_calibrated(MODELS[name](), X, seed=1)
    options = {"cost": "weights"} if method == "ot-weights" else {}
    merged = hs.merge([model, permuted_copy(model, 2)], DATA, method=method.removesuffix("-weights"),
                      reset_bn=False, progress=False, **options)
    with torch.no_grad():
        assert rel_err(model(X), merged.model(X)) <= 1e-4


@pytest.mark.parametrize("method", ["permute", "weight", "ot", "zip"])
def test_dead_units_pair_with_dead_units(method: str) -> None:
    # a third of the hidden units never fire on the data: their activations are all equal (0), so only
    # pairing them with each other keeps the merge exact (their averaged pre-activations stay negative)
    model = hs.zoo.vgg(batch_norm=False)
    with torch.no_grad():
        for conv in (model.features[0], model.features[5], model.classifier[0]):
            conv.bias[: conv.bias.numel() // 3] = -100.0
    merged = hs.merge([model, permuted_copy(model, 5)], DATA, method=method, reset_bn=False, progress=False)
    with torch.no_grad():
        assert rel_err(model(X), merged.model(X)) <= 1e-4


def test_three_models_merge_to_the_original() -> None:
    model = randomise_calibrated(hs.zoo.resnet((1, 1, 1)), X, seed=3)
    copies = [model, permuted_copy(model, 7), permuted_copy(model, 8)]
    for method in ("permute", "zip"):
        merged = hs.merge(copies, DATA, method=method, reset_bn=False, progress=False, weights=[1, 2, 3])
        with torch.no_grad():
            assert rel_err(model(X), merged.model(X)) <= 1e-4


def test_average_of_unaligned_copy_is_not_the_original() -> None:
    model = randomise_calibrated(hs.zoo.mlp([32, 24]), X, seed=1)
    merged = hs.merge([model, permuted_copy(model, 2)], DATA, method="average", reset_bn=False, progress=False)
    with torch.no_grad():
        assert rel_err(model(X), merged.model(X)) > 1e-2  # the oracle above is not trivially satisfied
