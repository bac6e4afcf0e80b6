"""graph.json round trip: every zoo model, a merged model and a model with tied, loose and constant
tensors come back from the data alone with the outputs of the original."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import torch
from helpers import randomise
from torch import fx, nn

import hetsurgery as hs
from hetsurgery.export import load, read_package, save

IMAGE = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
ZOO: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: hs.zoo.mlp([16, 8]),
    "vgg": lambda: hs.zoo.vgg(),
    "resnet20": lambda: hs.zoo.resnet20(),
    "resnet20-pad": lambda: hs.zoo.resnet20(shortcut="pad"),
    "transformer-manual": lambda: hs.zoo.transformer("manual"),
    "transformer-sdpa": lambda: hs.zoo.transformer("sdpa"),
    "transformer-mha": lambda: hs.zoo.transformer("mha"),
    "densenet": lambda: hs.zoo.densenet(),
    "mobilenet": lambda: hs.zoo.mobilenet(),
}


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and bool((got - want).abs().max() <= 1e-6 * want.abs().max())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_comes_back_from_graph_json(name: str, tmp_path: pathlib.Path) -> None:
    model = randomise(ZOO[name](), seed=3).eval()
    x = IMAGE.flatten(1) if name == "mlp" else IMAGE
    folder = save(hs.trace(model, x[:2], name=name), tmp_path / name)
    twin = load(folder)
    assert isinstance(twin, fx.GraphModule) and not twin.training
    with torch.no_grad():
        assert _close(twin(x), model(x)), name
    assert list(twin.state_dict()) == list(load(folder, trust_code=True).state_dict())
    assert set(twin.state_dict()) == set(model.state_dict())


def test_a_merged_model_comes_back_from_graph_json(tmp_path: pathlib.Path) -> None:
    a, b = (randomise(hs.zoo.mlp([16, 8]), seed=s).eval() for s in (1, 2))
    data = [torch.randn(32, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = hs.merge([a, b], data, method="zip", progress=False)
    folder = save(result.graph, tmp_path / "merged", plan=result.plan)
    pkg = read_package(folder)
    assert isinstance(pkg.model, fx.GraphModule) and pkg.plan is not None and pkg.plan.method == "zip"
    with torch.no_grad():
        assert _close(pkg.model(data[0]), result.model(data[0]))


class Loose(nn.Module):
    """Tied weights, a loose parameter, a buffer, a tensor constant and shape arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight
        self.offset = nn.Parameter(torch.randn(8))
        self.register_buffer("mask", torch.tril(torch.ones(5, 5)), persistent=False)
        self.scale = torch.tensor(0.5)  # a constant: fx reads it with get_attr

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.emb(tokens) + self.offset)
        n = tokens.shape[1]
        mixed = (self.mask @ h) * self.scale
        return self.head(mixed.reshape(tokens.shape[0], n, -1))


def test_tied_loose_and_constant_tensors_come_back(tmp_path: pathlib.Path) -> None:
    model = Loose().eval()
    tokens = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(0))
    folder = save(model, tmp_path / "loose", example_inputs=tokens)
    pkg = read_package(folder)
    twin = pkg.model
    assert twin.head.weight is twin.emb.weight
    assert torch.equal(twin.mask, model.mask) and "_tensor_constant0" not in twin.state_dict()
    assert list(twin.state_dict()) == list(load(folder, trust_code=True).state_dict())
    assert [(tuple(x.shape), x.dtype) for x in pkg.example_inputs] == [((3, 5), torch.int64)]
    with torch.no_grad():
        assert torch.equal(twin(tokens), model(tokens))
