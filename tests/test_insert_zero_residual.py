"""``InsertZeroResidual`` keeps the function at every legal position of every block stage (zoo and outside
models: ResNets, pre-activation ResNets, transformers with every kind of attention and a fused qkv, inverted
residuals), copies its neighbour's structure and inner weights, and refuses the others with the reason."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import randomise, rel_err
from outside_models import FusedQKVViT, PreActResNet
from torch import nn

import hetsurgery as hs
from hetsurgery.ir import UnitKind
from hetsurgery.passes import InsertIdentity, InsertZeroResidual, Pipeline

X = torch.randn(4, 1, 8, 8)
MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": hs.zoo.resnet20,
    "resnet20x2-pad": lambda: hs.zoo.resnet20(2, shortcut="pad"),
    "transformer-manual": lambda: hs.zoo.transformer("manual"),
    "transformer-sdpa": lambda: hs.zoo.transformer("sdpa"),
    "transformer-mha": lambda: hs.zoo.transformer("mha"),
    "mobilenet": hs.zoo.mobilenet,
    "preact-resnet": PreActResNet,
    "fused-qkv-vit": FusedQKVViT,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_residual_blocks_keep_the_function_wherever_they_are_legal(name: str) -> None:
    model = randomise(MODELS[name](), 1)
    g = hs.trace(model, X)
    with torch.no_grad():
        want = model(X)
    legal = 0
    for st in (st for st in g.stages if st.kind is UnitKind.BLOCK):
        for p in range(len(st) + 1):
            try:
                g2 = Pipeline((InsertZeroResidual(st.key, (p,)),))(g)
            except hs.PassError as exc:
                first = g.unit(st.units[0])
                assert p == 0 and first.fixed is not None and f"first unit {first.key} is fixed" in str(exc), exc
                continue
            legal += 1
            with torch.no_grad():
                assert rel_err(want, hs.to_module(g2)(X)) <= 1e-5
            new = [u for u in g2.units if u.origin == "insert-zero-residual"]
            assert len(new) == 1 and new[0].kind is UnitKind.BLOCK and new[0].key in g2.stage(st.key).units
            assert len(g2.stage(st.key)) == len(st) + 1
    assert legal > 0


def test_the_new_block_copies_its_neighbour_and_zeroes_the_last_batchnorm() -> None:
    g = hs.trace(randomise(hs.zoo.resnet((2, 1, 1)), 2), X)
    g2 = InsertZeroResidual(g.stages[0].key, (2,))(g)
    assert [u.key for u in g2.units if u.origin] == ["layer1_2_conv1"]  # layer1 (a Sequential) grew
    for leaf in ("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn1.running_var"):
        assert torch.equal(g2.params[f"layer1.2.{leaf}"], g.params[f"layer1.1.{leaf}"]), leaf
    assert not g2.params["layer1.2.bn2.weight"].any() and not g2.params["layer1.2.bn2.bias"].any()
    assert g2.params["layer1.1.bn2.weight"].any()  # the neighbour itself is untouched


def test_a_transformer_block_zeroes_both_of_its_branches() -> None:
    g = hs.trace(randomise(hs.zoo.transformer("manual", depth=1), 3), X)
    g2 = InsertZeroResidual(g.stages[0].key, (1,))(g)
    zeroed = {k for k, t in g2.params.items() if k.startswith("blocks.1.") and t.is_floating_point() and not t.any()}
    assert zeroed == {"blocks.1.attn.out.weight", "blocks.1.attn.out.bias", "blocks.1.fc2.weight", "blocks.1.fc2.bias"}


def test_several_blocks_and_a_pipeline_with_identity_layers() -> None:
    model = randomise(hs.zoo.resnet((1, 2, 2)), 4)
    g = hs.trace(model, X)
    g2 = Pipeline((InsertZeroResidual("stage0", (1, 1)), InsertZeroResidual("stage2", (2,))))(g)  # keys survive
    assert [len(st) for st in g2.stages] == [3, 2, 3]
    with torch.no_grad():
        assert rel_err(model(X), hs.to_module(g2)(X)) <= 1e-5


class PostGelu(nn.Module):
    """Blocks that apply a GELU after their add: the GELU is never the identity, so nothing can be inserted."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for conv in self.convs:
            x = nn.functional.gelu(x + conv(x))
        return self.head(x.mean((2, 3)))


def test_illegal_positions_are_refused_with_the_reason() -> None:
    resnet = hs.trace(hs.zoo.resnet20(), X)
    with pytest.raises(hs.PassError, match=r"position 0 of stage stage1 .*first unit layer2_0_conv1 is fixed "
                                           r"\(reads another group or shape than it writes"):
        InsertZeroResidual("stage1", (0,))(resnet)
    with pytest.raises(hs.PassError, match="positions go from 0 to 3, not 4"):
        InsertZeroResidual("stage1", (4,))(resnet)
    post = hs.trace(PostGelu(), X)
    with pytest.raises(hs.PassError, match=r"end in gelu after their add, which is not the identity"):
        InsertZeroResidual(post.stages[0].key, (1,))(post)
    mlp = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
    with pytest.raises(hs.PassError, match="stage of layers; insert layers with InsertIdentity"):
        InsertZeroResidual("stage0", (1,))(mlp)
    assert InsertIdentity  # the other pass: see test_insert_identity.py
