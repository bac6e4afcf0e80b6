"""``FuseReluSegment`` equals the hand computation ``W₂ D W₁`` for each sign estimator, is exact for the signs
of a single input, refuses what is not a Linear chain, and its report on a digits MLP matches a direct
evaluation."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.evaluate import accuracy
from hetsurgery.merging.fusion import fuse_relu_segment
from hetsurgery.passes import FuseReluSegment
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train


def _two_layers() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return hs.zoo.mlp([5, 4], in_features=3, num_classes=2).eval(), torch.randn(40, 3)


@pytest.mark.parametrize("estimator", list(Estimator))
def test_fusing_two_layers_equals_the_hand_computation(estimator: Estimator) -> None:
    model, x = _two_layers()
    l1, l2 = model.layers[0], model.layers[2]
    z = x @ l1.weight.T + l1.bias  # pre-activations of the first ReLU
    d = {Estimator.SIGN_OF_SUM: (z.sum(0) >= 0).float(),
         Estimator.MAJORITY: ((z > 0).sum(0) >= len(z) / 2).float(),
         Estimator.AVERAGE_SIGN: (z >= 0).float().mean(0)}[estimator]
    w = l2.weight @ torch.diag(d) @ l1.weight
    b = l2.weight @ (d * l1.bias) + l2.bias
    g = hs.trace(model, x[:2])
    signs = estimate_signs(g, ("layers_0", "layers_2"), [x[:17], x[17:]], estimator)  # two batches, streamed
    torch.testing.assert_close(signs[0].float(), d)
    fused = FuseReluSegment(("layers_0", "layers_2"), signs)(g)
    layer = fused.module.get_submodule("layers.2")
    torch.testing.assert_close(layer.weight, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(hs.to_module(fused)(x), model.layers[4](torch.relu(x @ w.T + b)))
    assert [u.key for u in fused.units] == ["layers_2", "layers_4"] and fused.unit("layers_2").origin


def test_the_signs_of_one_input_make_the_fusion_exact_on_it_with_batchnorm_folded() -> None:
    model = randomise(hs.zoo.mlp([8, 6, 5], batch_norm=True), 2)
    x = torch.randn(1, 64)
    g = hs.trace(model, x)
    units = g.stages[0].units
    fused = FuseReluSegment(units, estimate_signs(g, units, [x], Estimator.SIGN_OF_SUM))(g)
    assert len(fused.stages[0]) == 1
    with torch.no_grad():
        assert rel_err(model(x), hs.to_module(fused)(x)) <= 1e-5


class ConvChain1x1(nn.Module):
    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b, self.c = nn.Conv2d(6, 6, kernel, padding=kernel // 2), nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))).mean((2, 3)))


def test_one_by_one_convolutions_fuse_and_others_are_refused() -> None:
    x = torch.randn(1, 1, 4, 4)
    g = hs.trace(ConvChain1x1(1).eval(), x)
    fused = FuseReluSegment(("b", "c"), estimate_signs(g, ("b", "c"), [x], Estimator.MAJORITY))(g)
    assert isinstance(fused.module.get_submodule("c"), nn.Conv2d)
    g3 = hs.trace(ConvChain1x1(3).eval(), x)
    with pytest.raises(hs.PassError, match=r"unit b is a Conv2d with kernel \(3, 3\).*only Linear layers and 1x1"):
        FuseReluSegment(("b", "c"), (torch.ones(6),))(g3)
    with pytest.raises(hs.PassError, match="needs 1 sign vectors, got 0"):
        FuseReluSegment(("b", "c"), ())(g)
    resnet = hs.trace(hs.zoo.resnet20(), torch.randn(2, 1, 8, 8))
    with pytest.raises(hs.PassError, match="only layer units of a layer stage fuse"):
        FuseReluSegment(("layer1_0_conv1", "layer1_1_conv1"), (torch.ones(16),))(resnet)
    mlp = hs.trace(hs.zoo.mlp([8, 8, 8]), torch.randn(2, 64))
    with pytest.raises(hs.PassError, match="are not consecutive units"):
        FuseReluSegment(("layers_0", "layers_4"), (torch.ones(8),))(mlp)


def test_the_report_on_a_digits_mlp_is_a_direct_evaluation() -> None:
    torch.manual_seed(0)
    model = train(hs.zoo.mlp([64, 48, 32]), digits("train"), epochs=8)
    data = list(loader(digits("test"), 128))
    g = hs.trace(model, data[0][0][:2])
    fused, report = fuse_relu_segment(g, ("layers_2", "layers_4"), data, "sign_of_sum")
    merged = hs.to_module(fused).eval()
    with torch.no_grad():
        diff = max(float((model(x) - merged(x)).abs().max()) for x, _ in data)
        scale = max(float(model(x).abs().max()) for x, _ in data)
    assert report.relative_error == pytest.approx(diff / scale, rel=1e-6) and 0 < report.relative_error < 1
    assert report.accuracy_before == pytest.approx(accuracy(model, data))
    assert report.accuracy_after == pytest.approx(accuracy(merged, data))
    assert report.accuracy_change == pytest.approx(report.accuracy_after - report.accuracy_before)
    assert report.samples == len(digits("test")) and "relative output error" in str(report)
