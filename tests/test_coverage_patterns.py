"""Issue 12: the patterns of real architectures are understood. Models written in the style of ConvNeXt, Swin,
ShuffleNetV2, EfficientNet, MaxViT and fused-qkv ViTs permute exactly and are covered, and each pattern's rule
gives the groups it promises."""

from __future__ import annotations

import outside_models as om
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_permutation_invariant
from torch import nn

import hetsurgery as hs
from hetsurgery.errors import PassError
from hetsurgery.passes import PadWidth

X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

MODELS = {
    "convnext": om.TinyConvNeXt,
    "swin": om.TinySwin,
    "shufflenet": om.TinyShuffleNet,
    "efficientnet": om.TinyEfficientNet,
    "chunk-vit": om.ChunkViT,
    "maxvit": om.TinyMaxViT,
    "fused-qkv-vit": om.FusedQKVViT,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_and_covered(name: str) -> None:
    g = assert_permutation_invariant(MODELS[name](), X)
    assert g.coverage() >= 0.95, g.summary()
    assert all(grp.perm_ok or grp.by_design for grp in g.groups), g.summary()


def _groups_on(g: hs.ModelGraph, param: str, dim: int = 0) -> list[hs.PermGroup]:
    return [grp for grp in g.groups if any(s.param == param and s.dim == dim for s in grp.slots)]


@pytest.mark.parametrize(("model", "qkv", "moves"), [(om.ChunkViT(), "blocks.0.attn.qkv.weight", True),
                                                     (om.FusedQKVViT(), "blocks.0.attn.qkv.weight", True),
                                                     (om.TinyMaxViT(), "block_attn.attn.to_qkv.weight", False)])
def test_a_fused_qkv_becomes_head_groups_at_their_offsets(model: nn.Module, qkv: str, moves: bool) -> None:
    # chunk (or reshape + unbind) cuts the 3d outputs in three; q and k meet in q·k and join, v stays apart;
    # whole heads move where an attention ties q·k to v head by head (MaxViT's einsum adds a per-head bias)
    g = hs.trace(model, X)
    qk, v = _groups_on(g, qkv)
    assert sorted(s.offset for s in qk.slots if s.param == qkv) == [0, qk.size]
    assert [s.offset for s in v.slots if s.param == qkv] == [2 * qk.size]
    for grp in (qk, v):
        assert grp.perm_ok and grp.structure == hs.Blocks(2, 8, moves=moves) and not grp.pad_ok and not grp.zip_ok
    assert qk.heads_with == ((v.id,) if moves else ())


def test_a_gated_mlp_joins_value_and_gate() -> None:
    g = hs.trace(om.ChunkViT(), X)
    (hidden,) = _groups_on(g, "blocks.0.mlp.fc1.weight")
    assert sorted(s.offset for s in hidden.slots if s.param == "blocks.0.mlp.fc1.weight") == [0, 32]
    assert hidden.perm_ok and hidden.pad_ok and hidden.zip_ok


def test_channel_shuffle_interleaves_groups() -> None:
    g = hs.trace(om.TinyShuffleNet(), X)
    strided = [grp for grp in g.groups if any(s.stride > 1 for s in grp.slots)]
    assert strided and all(grp.perm_ok and not grp.pad_ok and not grp.zip_ok for grp in strided)
    assert any(s.stride == 2 and s.offset % 2 == 1 for grp in strided for s in grp.slots)
    assert g.coverage() == 1.0
    with pytest.raises(PassError, match="cannot zip"):
        hs.passes.ZipNeurons(strided[0].id, torch.eye(strided[0].size)[:1], torch.eye(strided[0].size)[:, :1])(g)


def test_shuffle_by_reshape_and_flatten_is_the_same_interleave() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 6, 1), nn.Linear(6 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            y = y.reshape(y.shape[0], 3, 2, 2, 2).transpose(1, 2).flatten(1)  # (N, 2*3*H*W) after the shuffle
            return self.b(y)

    g = assert_permutation_invariant(Net(), torch.randn(4, 1, 2, 2))
    slots = [s for grp in g.groups for s in grp.slots if s.param == "b.weight" and s.dim == 1]
    assert sorted((s.offset, s.stride, s.inner) for s in slots) == [(0, 3, 4), (4, 3, 4), (8, 3, 4)]


def test_stochastic_depth_is_inlined() -> None:
    g = hs.trace(om.TinyEfficientNet().eval(), X)
    assert not any(n.target is om.stochastic_depth for n in g.module.graph.nodes)  # the identity at eval: gone
    training = hs.trace(om.TinyEfficientNet().train(), X)
    targets = [n.target for n in training.module.graph.nodes]
    assert om.stochastic_depth not in targets and "bernoulli_" in targets  # a per-sample scale in training
    assert training.coverage() == 1.0


def test_a_wrapped_call_the_tracer_cannot_follow_stays_whole() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(data_branch(self.a(x)))

    g = assert_permutation_invariant(Net(), torch.randn(5, 3))
    assert any(n.target is data_branch for n in g.module.graph.nodes)
    (a,) = _groups_on(g, "a.weight")
    assert a.frozen is not None and "data_branch" in a.frozen


def data_branch(x: torch.Tensor) -> torch.Tensor:
    """Branches on tensor data, which no trace can follow; reverses the channels, so no probe passes it."""
    return x.flip(-1) if bool(x.sum() > 0) else -x.flip(-1)


torch.fx.wrap("data_branch")


def test_layer_scale_and_channels_last_layer_norm() -> None:
    g = hs.trace(om.TinyConvNeXt(), X)
    (stream,) = _groups_on(g, "stage1.0.gamma")
    assert hs.Slot("stage1.1.gamma", 0) in stream.slots and hs.Slot("stage1.0.norm.weight", 0) in stream.slots
    assert stream.perm_ok and not stream.pad_ok and stream.zip_ok  # LayerNorm over the channels
    assert ("stage1.0.gamma", 1) in g.fixed_axes  # gamma is (C, 1, 1)


def test_relative_position_bias_tables_are_understood() -> None:
    g = hs.trace(om.TinySwin(), X)
    assert {("blocks.0.attn.table", 0), ("blocks.0.attn.table", 1)} <= g.fixed_axes
    assert g.coverage() == 1.0


def test_zero_padded_shortcut_adds_groups_of_equal_channels() -> None:
    g = assert_permutation_invariant(hs.zoo.resnet20(in_channels=1, shortcut="pad"), X)
    assert g.coverage() == 1.0
    padded = [grp for grp in g.groups if any("F.pad" in r for r in grp.pad_blockers)]
    assert padded and all(grp.perm_ok and not grp.zip_ok for grp in padded)


class Pieces(nn.Module):
    """One Linear(4, 12), cut along its outputs in the way ``how`` says, each piece read by its own Linear."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 12)
        self.heads = nn.ModuleList(nn.Linear(n, 2) for n in (3, 5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.how == "split":
            parts = torch.split(h, [3, 5, 4], dim=-1)
        elif self.how == "method-split":
            parts = h.split([3, 5, 4], -1)
        elif self.how == "tensor-split":
            parts = torch.tensor_split(h, [3, 8], dim=1)
        elif self.how == "narrow":
            parts = (h.narrow(1, 0, 3), torch.narrow(h, 1, 3, 5), h.narrow(-1, 8, 4))
        else:
            parts = (h[:, :3], h[..., 3:8], h[:, 8:])
        p0, p1, p2 = parts
        return self.heads[0](p0) + self.heads[1](p1) + self.heads[2](p2)


@pytest.mark.parametrize("how", ["split", "method-split", "tensor-split", "narrow", "slice"])
def test_every_way_of_cutting_channels_makes_sub_groups(how: str) -> None:
    g = assert_permutation_invariant(Pieces(how), torch.randn(5, 4))
    pieces = _groups_on(g, "a.weight")
    assert [(grp.size, [s.offset for s in grp.slots if s.param == "a.weight"]) for grp in pieces] == \
        [(3, [0]), (5, [3]), (4, [8])]
    assert all(grp.perm_ok for grp in pieces) and g.coverage() == 1.0


def test_a_cut_through_a_channels_entries_freezes() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 3, 1), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).flatten(1)[:, 2:7])  # each channel owns 4 entries: 2:7 cuts two of them

    g = assert_permutation_invariant(Net(), torch.randn(4, 1, 2, 2))
    (a,) = _groups_on(g, "a.weight")
    assert a.frozen is not None and "indexing into the channel dim" in a.frozen


class Extremum(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 2), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 5, 3)
        h = self.a(x)
        if self.how == "values-over-tokens":
            return self.b(torch.max(h, dim=1).values + h.min(1)[0])
        if self.how == "indices-over-tokens":
            return self.b(h.argmax(dim=1).float() + torch.max(h, 1).indices.float())
        if self.how == "values-over-channels":
            return self.c(torch.max(h, dim=-1)[0])
        if self.how == "elementwise":
            return self.b(torch.max(h, torch.zeros_like(h)).mean(1))
        return self.c(torch.max(h, dim=-1).indices.float())  # names channels


@pytest.mark.parametrize(("how", "free"), [("values-over-tokens", True), ("indices-over-tokens", True),
                                           ("values-over-channels", True), ("elementwise", False),
                                           ("indices-over-channels", False)])
def test_max_and_min_with_a_dim(how: str, free: bool) -> None:
    g = assert_permutation_invariant(Extremum(how), torch.randn(4, 5, 3))
    (a,) = _groups_on(g, "a.weight")
    if how == "elementwise":  # max with a tensor of zeros: a broadcast of an untracked tensor over the channels
        assert a.frozen is not None
    else:
        assert a.perm_ok is free
    if how == "values-over-channels":
        assert not a.pad_ok  # the max of zero-padded channels can differ


class Shifts(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.how == "roll-spatial":
            h = torch.roll(h, shifts=(1, -1), dims=(2, 3)) + h.roll(1, -1)
        elif self.how == "roll-channels":
            h = torch.roll(h, 1, dims=1)
        elif self.how == "pad-spatial":
            h = F.pad(h, (1, 1, 0, 2))
        else:
            h = F.pad(h, (0, 0, 0, 0, 1, 0), mode="replicate")[:, 1:]
        return self.b(h.mean((2, 3)))


@pytest.mark.parametrize(("how", "ok"), [("roll-spatial", True), ("roll-channels", False), ("pad-spatial", True),
                                         ("pad-channels-replicate", False)])
def test_roll_and_pad(how: str, ok: bool) -> None:
    g = assert_permutation_invariant(Shifts(how), torch.randn(2, 1, 4, 4))
    (a,) = _groups_on(g, "a.weight")
    assert a.perm_ok is ok


class Einsum(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 2), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 5, 3)
        h = self.a(x)
        if self.how == "transpose":
            return self.b(torch.einsum("bnc->bcn", h).mean(-1))
        if self.how == "sum-channels":
            return self.c(torch.einsum("bnc->bn", h))
        if self.how == "gram":
            return self.c(torch.einsum("bic,bjc->bij", h, torch.relu(h)).mean(-1))
        return self.c(torch.einsum("bnc,c->bn", h, torch.linspace(0, 1, 6)))  # weighted by a constant


@pytest.mark.parametrize(("how", "ok", "pad"), [("transpose", True, True), ("sum-channels", True, False),
                                                ("gram", True, True), ("constant-weights", False, False)])
def test_einsum(how: str, ok: bool, pad: bool) -> None:
    g = assert_permutation_invariant(Einsum(how), torch.randn(4, 5, 3))
    (a,) = _groups_on(g, "a.weight")
    assert a.perm_ok is ok and a.pad_ok is pad


def test_pad_width_refuses_an_interleaved_group() -> None:
    g = hs.trace(om.TinyShuffleNet(), X)
    grp = next(grp for grp in g.groups if any(s.stride > 1 for s in grp.slots))
    with pytest.raises(PassError):
        PadWidth(grp.id, grp.size + 2)(g)
