"""``balance="merge"`` on bias-free MLPs (CLAFusion's setting) keeps the models' own layer kinds: the fused layer
gains no bias the model never had, and where the fusion is exact (every pre-activation positive, so each ReLU is
the identity and ``D = I``) a deep bias-free MLP merged with its fused, permuted shallow copy is the deep model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import FuseReluSegment
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs


def _mlp(hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = 12
    for w in hidden:
        layers += [nn.Linear(prev, w, bias=False), nn.ReLU()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, 5, bias=False)).eval()


def _positive_pair() -> tuple[nn.Sequential, nn.Sequential, torch.Tensor]:
    """A deep bias-free MLP with positive weights (so on positive inputs every ReLU passes everything) and the
    shallow MLP that computes it: its hidden layer the product of A's, rows permuted."""
    torch.manual_seed(0)
    deep = _mlp([8, 8, 8])
    with torch.no_grad():
        for m in deep:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.rand_like(m.weight) / m.weight.shape[1] ** 0.5)
    w = [m.weight.detach() for m in deep if isinstance(m, nn.Linear)]
    shallow = _mlp([8])
    perm = torch.randperm(8)
    with torch.no_grad():
        shallow[1].weight.copy_((w[2] @ w[1] @ w[0])[perm])
        shallow[3].weight.copy_(w[3][:, perm])
    return deep, shallow, torch.rand(96, 12)


def test_fusing_bias_free_layers_keeps_them_bias_free() -> None:
    deep, _, x = _positive_pair()
    g = hs.trace(deep, x[:2])
    units = tuple(g.stage("stage0").units)
    fused = hs.to_module(FuseReluSegment(units, estimate_signs(g, units, [x], Estimator.SIGN_OF_SUM))(g))
    assert all(m.bias is None for m in fused.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), deep(x), rtol=1e-5, atol=1e-6)  # D = I: exact


@pytest.mark.parametrize("method", ["ot", "zip"])
def test_a_bias_free_mlp_passes_balance_merge_and_is_given_back(method: str) -> None:
    deep, shallow, x = _positive_pair()
    r = hs.merge([deep, shallow], [x[:48], x[48:]], method=method, depth="cla", balance="merge", progress=False)
    assert len(r.report.fusions) == 1
    assert all(m.bias is None for m in r.model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        torch.testing.assert_close(r.model(x), deep(x), rtol=1e-4, atol=1e-5)


def test_a_bias_free_mlp_of_unequal_widths_merges_without_gaining_biases() -> None:
    """CLAFusion's MLP ablation shape (400-200-100-50-25 with 400-200-100, scaled down), trained or not."""
    torch.manual_seed(1)
    a, b = _mlp([16, 12, 8, 6, 4]), _mlp([16, 12, 8])
    x = torch.randn(64, 12)
    for method in ("ot", "zip"):
        r = hs.merge([a, b], [x], method=method, depth="cla", balance="merge", progress=False)
        assert all(m.bias is None for m in r.model.modules() if isinstance(m, nn.Linear))
        assert bool(torch.isfinite(r.model(x)).all())
