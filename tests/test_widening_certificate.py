"""The widening certificate of every width method.

B is a function-preserving widening of A (Net2Net: some channels duplicated, their outgoing weights split by
random fractions) with every group permuted, so A and B compute the same function. A width method that
aligns channels correctly must then give A's function back:

* ``merge([A, B], weights=[0, 1])`` is B carried into the merged space, at A's width or at B's;
* ``merge([A, B])`` (equal weights) at A's width or at B's averages two copies of one function.

``mal`` and ``mal-pad`` zero-pad the narrower model instead of duplicating its channels, so only the first
case at B's (the padded) width is theirs to pass: B carried into the padded space is B permuted. At A's width
MAL keeps A's channels and drops the rest of B, and an average puts a real channel next to a padded zero
(half of it): neither can be exact by construction, and the test checks that they are not silently claimed.
"""

from __future__ import annotations

import pytest
import torch
from helpers import randomise, rel_err, widened

import hetsurgery as hs

MODELS = {
    "mlp": (lambda: hs.zoo.mlp([8, 6], in_features=16), (16,)),
    "vgg": (lambda: hs.zoo.vgg([8, "M", 8], hidden=12), (1, 8, 8)),
    "resnet": (lambda: hs.zoo.resnet((1, 1, 1), 1), (1, 8, 8)),
}
METHODS = {"ot": {}, "ot-weights": {"cost": "weights"}, "zip": {}, "mal": {}, "mal-pad": {}}
PASSES = {  # (weights, width = which model's) that each method must get exactly right
    "ot": {("0,1", 0), ("0,1", 1), ("equal", 0), ("equal", 1)},
    "ot-weights": {("0,1", 0), ("0,1", 1), ("equal", 0), ("equal", 1)},
    "zip": {("0,1", 0), ("0,1", 1), ("equal", 0), ("equal", 1)},
    "mal": {("0,1", 1)},
    "mal-pad": {("0,1", 1)},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    factory, shape = MODELS[request.param]
    torch.manual_seed(0)
    a = randomise(factory(), 1)
    x = torch.randn(256, *shape)
    b = hs.to_module(widened(hs.trace(a, x[:2]))).eval()
    with torch.no_grad():
        assert rel_err(a(x), b(x)) < 1e-5  # the widening itself is exact
    return a, b, x


@pytest.mark.parametrize("label", sorted(METHODS))
def test_merging_a_model_with_its_widening_gives_its_function_back(
        pair: tuple[torch.nn.Module, torch.nn.Module, torch.Tensor], label: str) -> None:
    a, b, x = pair
    method = label.removesuffix("-weights")
    data = [x[:128], x[128:]]
    for weights in ("0,1", "equal"):
        for width in (0, 1):
            merged = hs.merge([a, b], data, method=method, weights=[0, 1] if weights == "0,1" else None, width=width,
                              reset_bn=False, progress=False, **METHODS[label]).model
            with torch.no_grad():
                err = rel_err(a(x), merged(x))
            if (weights, width) in PASSES[label]:
                assert err <= 1e-4, (label, weights, width, err)
            else:
                assert err > 1e-3, f"{label} {weights} width={width}: exact ({err:.1e}); add it to PASSES"
