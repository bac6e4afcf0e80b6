"""``InsertIdentity`` keeps the function at every legal position of every layer stage (zoo and outside
models, randomised BatchNorm statistics) and refuses the others with the node and the reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import randomise, rel_err
from outside_models import ConvChain
from torch import nn

import hetsurgery as hs
from hetsurgery.ir import UnitKind
from hetsurgery.passes import InsertIdentity, Pipeline

X = torch.randn(4, 1, 8, 8)
MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "mlp": (lambda: hs.zoo.mlp([8, 8, 6]), torch.randn(4, 64)),
    "mlp-bn": (lambda: hs.zoo.mlp([8, 6], batch_norm=True), torch.randn(4, 64)),
    "vgg": (hs.zoo.vgg, X),
    "densenet": (hs.zoo.densenet, X),
    "mobilenet": (hs.zoo.mobilenet, X),
    "conv-chain": (ConvChain, X),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_identity_layers_keep_the_function_wherever_they_are_legal(name: str) -> None:
    factory, x = MODELS[name]
    model = randomise(factory(), 1)
    g = hs.trace(model, x)
    with torch.no_grad():
        want = model(x)
    legal = 0
    for st in (st for st in g.stages if st.kind is UnitKind.LAYER):
        for p in range(len(st) + 1):
            try:
                g2 = Pipeline((InsertIdentity(st.key, (p,)),))(g)  # the pipeline checks the function too
            except hs.PassError as exc:
                assert p == 0, f"{name}: only a stage's start can be illegal here ({exc})"
                first = g.unit(st.units[0])
                assert (f"first unit {first.key} is fixed" in str(exc)) if first.fixed else \
                    "not the identity on the values there" in str(exc)
                continue
            legal += 1
            with torch.no_grad():
                assert rel_err(want, hs.to_module(g2)(x)) <= 1e-5
            new = [u for u in g2.units if u.origin == "insert-identity"]
            assert len(new) == 1 and len(g2.units) == len(g.units) + 1
            assert new[0].key in g2.stage(st.key).units  # the new unit joined the stage
    assert legal > 0


def test_two_positions_and_a_repeated_one_insert_three_units_after_relus() -> None:
    model = randomise(hs.zoo.mlp([8, 8, 6]), 2)
    x = torch.randn(6, 64)
    g = hs.trace(model, x)
    g2 = InsertIdentity("stage0", (1, 3, 3))(g)
    assert len(g2.stage("stage0")) == 6
    with torch.no_grad():
        assert rel_err(model(x), hs.to_module(g2)(x)) == 0.0
    names = [n for n, _ in hs.to_module(g2).named_children()]
    assert names == ["layers"]  # the Sequential grew: layers.7 ... layers.12
    assert sorted(int(k) for k, _ in g2.module.get_submodule("layers").named_children())[-6:] == list(range(7, 13))


def test_identity_conv_layers_are_dirac_kernels_and_identity_batchnorms() -> None:
    g = hs.trace(randomise(ConvChain(), 3), X)
    g2 = InsertIdentity(g.stages[0].key, (2,))(g)
    new = next(u for u in g2.units if u.origin)
    conv, bn = (g2.module.get_submodule(str(next(n for n in g2.module.graph.nodes if n.name == k).target))
                for k in new.nodes[:2])
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
    expect = torch.zeros_like(conv.weight)
    nn.init.dirac_(expect)
    assert torch.equal(conv.weight, expect)
    assert isinstance(bn, nn.BatchNorm2d)
    torch.testing.assert_close(bn.weight, torch.full_like(bn.weight, (1 + bn.eps) ** 0.5))


class GeluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(nn.functional.gelu(self.fc2(nn.functional.gelu(self.fc1(x)))))


class Shifted(nn.Module):
    """A ReLU layer, then ``2 h - 1`` (values in [-1, inf)), then another ReLU layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) * 2 - 1
        return self.fc3(torch.relu(self.fc2(h)))


def test_illegal_positions_are_refused_with_the_reason() -> None:
    g = hs.trace(GeluMLP(), torch.randn(2, 4))
    with pytest.raises(hs.PassError, match=r"position 1 of stage stage0 \(after node gelu\): the stage's activation "
                                           r"gelu is not the identity on the values there"):
        InsertIdentity("stage0", (1,))(g)
    shifted = hs.trace(Shifted(), torch.randn(2, 4))
    with pytest.raises(hs.PassError, match=r"position 0 of stage stage1 \(after node sub\).* lie in \[-1, inf\]"):
        InsertIdentity("stage1", (0,))(shifted)
    InsertIdentity("stage1", (1,))(shifted)  # after the ReLU: fine
    mlp = hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))
    with pytest.raises(hs.PassError, match=r"position 0 .*first unit layers_0 is fixed \(reads the model input\)"):
        InsertIdentity("stage0", (0,))(mlp)
    with pytest.raises(hs.PassError, match="positions go from 0 to 1, not 2"):
        InsertIdentity("stage0", (2,))(mlp)
    with pytest.raises(hs.IRError, match="no stage 'nope'"):
        InsertIdentity("nope", (0,))(mlp)
    resnet = hs.trace(hs.zoo.resnet20(), X)
    with pytest.raises(hs.PassError, match="stage of residual blocks; insert blocks with InsertZeroResidual"):
        InsertIdentity(resnet.stages[0].key, (1,))(resnet)
