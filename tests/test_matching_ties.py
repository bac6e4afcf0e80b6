"""Live features that tie on the data: two ReLUs that fire on one and the same calibration sample only are
perfectly correlated with each other and with both their copies. Their own parameters (the channel signature)
must decide, so that a model merged with a permuted copy of itself is still the model, with every method that
matches on correlations."""

from __future__ import annotations

import pytest
import torch
from helpers import permuted, rel_err

import hetsurgery as hs


def _tied_mlp(x0: torch.Tensor) -> torch.nn.Module:
    """An MLP whose hidden units 1 and 4 fire on ``x0`` only, in proportion (same features up to scale), with
    different biases and different outgoing weights."""
    torch.manual_seed(0)
    model = hs.zoo.mlp([8], in_features=64).eval()
    lin = model.layers[0]
    with torch.no_grad():
        for unit, scale in ((1, 1.0), (4, 2.0)):
            lin.weight[unit] = scale * x0
            lin.bias[unit] = -scale * 0.6 * float(x0 @ x0)
    return model


@pytest.mark.parametrize("method", ["permute", "zip", "ot", "weight"])
@pytest.mark.parametrize("seed", range(4))
def test_a_permuted_copy_with_tied_units_merges_back_exactly(method: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 64, generator=gen)
    model = _tied_mlp(x[0])
    with torch.no_grad():
        hidden = torch.relu(model.layers[0](x))
    assert (hidden[1:, [1, 4]] == 0).all() and (hidden[0, [1, 4]] > 0).all()  # the tie is there
    twin = hs.to_module(permuted(hs.trace(model, x[:2]), seed)).eval()
    merged = hs.merge([model, twin], [x], method=method, reset_bn=False, progress=False).model
    with torch.no_grad():
        assert rel_err(model(x), merged(x)) <= 1e-5
