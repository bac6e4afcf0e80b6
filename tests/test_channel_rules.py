"""Each channel rule on a tiny model: exact invariance, and the group structure the rule promises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_permutation_invariant
from torch import nn

import hetsurgery as hs
from hetsurgery.ir import OpKind
from hetsurgery.tracing.rules import RULES

X = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0))


def test_rule_table_covers_every_opkind() -> None:
    assert set(RULES) == set(OpKind)


class Flatten(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(4, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if self.how == "module":
            x = self.flat(x)
        elif self.how == "torch":
            x = torch.flatten(x, 1)
        elif self.how == "view":
            x = x.view(x.size(0), -1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.fc(x)


@pytest.mark.parametrize("how", ["module", "torch", "view", "reshape"])
def test_flatten_spellings_give_inner_slots(how: str) -> None:
    g = assert_permutation_invariant(Flatten(how), X)
    conv = next(grp for grp in g.groups if grp.perm_ok)
    assert hs.Slot("fc.weight", 1, inner=16, role=hs.Role.CONSUME) in conv.slots
    assert hs.Slot("bn.running_var", 0) in conv.slots


class Residual(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = F.relu(self.b(h))
        if self.how == "operator":
            z = h + y - self.c(y) * h
        elif self.how == "torch":
            z = torch.mul(torch.sub(torch.add(h, y), self.c(y)), h)
        elif self.how == "method":
            z = h.add(y).sub(self.c(y)).mul(h)
        else:
            z = h.clone()
            z += y
            z -= self.c(y)
            z *= h
        return self.head(z.mean(dim=(2, 3)))


@pytest.mark.parametrize("how", ["operator", "torch", "method", "inplace"])
def test_binary_ops_join_groups(how: str) -> None:
    g = assert_permutation_invariant(Residual(how), X)
    (stream,) = [grp for grp in g.groups if grp.perm_ok]  # h, y and c(y) all meet in one group
    assert {s.param for s in stream.slots if s.role is hs.Role.PRODUCE} == {"a.weight", "a.bias", "b.weight",
                                                                             "b.bias", "c.weight", "c.bias"}


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4 if i == 0 else 8, 8, 3, padding=1) for i in range(4))
        self.mods = nn.ModuleList([nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU(0.1),
                                   nn.Hardswish(), nn.Dropout(0.3), nn.Identity(), nn.ReLU6()])
        self.gn = nn.GroupNorm(2, 8)
        self.pool, self.apool = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs[0](x)
        for m in self.mods:
            x = m(x)
        x = F.leaky_relu(F.silu(F.gelu(torch.tanh(torch.sigmoid(self.convs[1](x))))))
        x = F.dropout(F.hardswish(x.relu().sigmoid().tanh()), 0.2, training=self.training)
        x = self.gn(self.convs[2](x))
        x = F.avg_pool2d(self.pool(x), 1)
        x = F.max_pool2d(F.adaptive_avg_pool2d(self.convs[3](x), 2), 2)
        return self.fc(self.apool(x).flatten(1))


def test_activations_and_pools_pass_channels_through() -> None:
    g = assert_permutation_invariant(Activations(), X)
    assert sum(grp.perm_ok for grp in g.groups) == 4
    gn = next(grp for grp in g.groups if hs.Slot("gn.weight", 0) in grp.slots)
    assert gn.structure == hs.Blocks(2, 4) and not gn.pad_ok


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x), x], dim=1)  # x: the model input, a frozen segment
        return self.fc(self.c(torch.relu(self.bn(y))).flatten(1))


def test_concat_gives_offset_slots() -> None:
    g = assert_permutation_invariant(Concat(), X)
    b = next(grp for grp in g.groups if hs.Slot("b.weight", 0) in grp.slots)
    assert hs.Slot("c.weight", 1, offset=3, role=hs.Role.CONSUME) in b.slots
    assert hs.Slot("bn.running_mean", 0, offset=3) in b.slots


def test_embedding_and_layernorm_sequence() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.pos = nn.Parameter(torch.randn(5, 8))
            self.ln = nn.LayerNorm(8)
            self.dw = nn.Conv1d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.ln(self.emb(tokens) + self.pos)
            x = x + self.dw(x.transpose(1, 2)).transpose(1, 2)
            return self.head(F.gelu(self.fc(x)).softmax(-1)).mean(1)

    tokens = torch.randint(0, 11, (3, 5))
    g = assert_permutation_invariant(Tiny(), tokens)
    stream = next(grp for grp in g.groups if hs.Slot("emb.weight", 1) in grp.slots)
    assert hs.Slot("pos", 1) in stream.slots and hs.Slot("dw.weight", 0) in stream.slots
    assert stream.perm_ok and not stream.pad_ok  # LayerNorm normalises over it
    assert ("emb.weight", 0) in g.fixed_axes
    hidden = next(grp for grp in g.groups if hs.Slot("fc.weight", 0) in grp.slots)
    assert not hidden.pad_ok  # softmax over the channels


def test_weight_tying_joins_groups() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(7, 6)
            self.mid = nn.Linear(6, 6)
            self.out = nn.Linear(6, 7, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.mid(self.emb(t))))

    g = assert_permutation_invariant(Tied(), torch.randint(0, 7, (2, 3)))
    assert "out.weight" not in g.params  # one tensor, known by its first name
    tied = next(grp for grp in g.groups if hs.Slot("emb.weight", 1) in grp.slots)
    assert tied.perm_ok and any(s.param == "mid.weight" and s.dim == 0 for s in tied.slots)
    assert not tied.zip_ok  # read and written along the same axis


def test_conv1d_grouped_and_depthwise_with_multiplier() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv1d(4, 8, 1)
            self.dw = nn.Conv1d(8, 16, 3, padding=1, groups=8)  # depth multiplier 2
            self.g = nn.Conv1d(16, 12, 1, groups=4)
            self.fc = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.g(torch.relu(self.dw(torch.relu(self.a(x))))).amax(-1))

    g = assert_permutation_invariant(Net(), torch.randn(3, 4, 9))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert hs.Slot("dw.weight", 0, inner=2) in a.slots
    assert hs.Slot("g.weight", 1, inner=2, role=hs.Role.CONSUME, chunks=4) in a.slots
    assert a.structure == hs.Blocks(4, 2)


class SharedOnInputAndHidden(nn.Module):
    """One Linear(4, 4) reads the model input, then its own (hidden) output."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.fc = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.l(F.relu(self.l(x))))


class VocabAsHidden(nn.Module):
    """An Embedding tied to a Linear whose vocabulary-sized output is a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out, self.head = nn.Embedding(7, 6), nn.Linear(6, 7, bias=False), nn.Linear(7, 2)
        self.out.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.out(F.relu(self.emb(t))))).mean(1)


@pytest.mark.parametrize(("model", "x", "slot", "why"), [
    (SharedOnInputAndHidden(), torch.randn(3, 4), hs.Slot("l.weight", 1, role=hs.Role.CONSUME),
     "l.weight dim 1 is also the model-input feature axis"),
    (VocabAsHidden(), torch.randint(0, 7, (3, 5)), hs.Slot("emb.weight", 0), "emb.weight dim 0 is also the vocabulary"),
])
def test_axis_fixed_by_design_freezes_the_group_it_is_a_slot_of(model: nn.Module, x: torch.Tensor,
                                                                 slot: hs.Slot, why: str) -> None:
    g = assert_permutation_invariant(model, x)
    grp = next(grp for grp in g.groups if slot in grp.slots)
    assert grp.frozen is not None and why in grp.frozen
    assert (slot.param, slot.dim) in g.fixed_axes


class UnbatchedConv2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d, self.fc = nn.Conv2d(4, 6, 3), nn.Conv2d(6, 5, 1), nn.Linear(5, 2)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (C, H, W)
        return self.fc(self.d(self.pool(F.relu(self.c(x)))).mean(dim=(1, 2)))


class UnbatchedConv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.dw, self.d, self.fc = nn.Conv1d(4, 6, 3), nn.Conv1d(6, 6, 3, groups=6), nn.Conv1d(6, 5, 1), \
            nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (C, L)
        h = F.avg_pool1d(F.relu(self.c(x)), 2)
        return self.fc(self.d(h + self.dw(F.pad(h, (1, 1)))).amax(-1))


@pytest.mark.parametrize(("model", "x"), [(UnbatchedConv2d(), torch.randn(4, 10, 10)),
                                          (UnbatchedConv1d(), torch.randn(4, 13))])
def test_unbatched_conv_reads_channels_along_dim_0(model: nn.Module, x: torch.Tensor) -> None:
    g = assert_permutation_invariant(model, x)
    c = next(grp for grp in g.groups if hs.Slot("c.weight", 0) in grp.slots)
    assert c.perm_ok and hs.Slot("d.weight", 1, role=hs.Role.CONSUME) in c.slots
    assert all(grp.perm_ok or grp.frozen == "model output" for grp in g.groups)  # pooling passes dim 0 through


class AcrossHeads(nn.Module):
    """A Linear(4, 8) viewed as 2 heads of 4, then an op along the head dim (1) or inside a head (2)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a, self.fc, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).view(x.shape[0], 2, 4)
        if self.op == "softmax-heads":
            return self.fc(torch.softmax(h, dim=1).reshape(x.shape[0], 8))
        if self.op == "log-softmax-heads":
            return self.fc(h.log_softmax(-2).reshape(x.shape[0], 8))
        if self.op == "sum-heads":
            return self.fc2(h.sum(1))
        if self.op == "amax-heads":
            return self.fc2(torch.amax(h, dim=1))
        return self.fc(F.softmax(h, dim=2).reshape(x.shape[0], 8))  # inside each head: fine


@pytest.mark.parametrize("op", ["softmax-heads", "log-softmax-heads", "sum-heads", "amax-heads"])
def test_softmax_or_reduction_across_heads_freezes_them(op: str) -> None:
    g = assert_permutation_invariant(AcrossHeads(op), torch.randn(3, 4))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.frozen is not None and "node" in a.frozen


def test_softmax_inside_each_head_keeps_the_heads() -> None:
    g = assert_permutation_invariant(AcrossHeads("softmax-inside"), torch.randn(3, 4))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.perm_ok and a.structure == hs.Blocks(2, 4) and not a.pad_ok


def test_rms_norm_passes_channels_through_but_blocks_padding() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.fc = nn.Linear(4, 8), nn.RMSNorm(8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.gelu(self.norm(self.a(x))))

    net = Net()
    with torch.no_grad():
        net.norm.weight.copy_(torch.rand(8, generator=torch.Generator().manual_seed(1)) + 0.5)
    g = assert_permutation_invariant(net, torch.randn(3, 5, 4))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.perm_ok and hs.Slot("norm.weight", 0) in a.slots and not a.pad_ok
    assert g.coverage() == 1.0


def test_every_pooling_says_which_dims_it_pools() -> None:
    from hetsurgery.tracing.classify import FUNCTIONS, MODULES
    from hetsurgery.tracing.rules.pointwise import POOLED_DIMS

    spatial = {k for k, kind in {**MODULES, **FUNCTIONS}.items() if kind is OpKind.SPATIAL}
    assert spatial - set(POOLED_DIMS) == {F.pad, F.interpolate, nn.Upsample}  # their dims come from the call


def test_pooling_over_a_channel_last_dim_freezes() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Linear(4, 8), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, 8): MaxPool1d pools the channels
            return self.fc(F.max_pool1d(self.a(x), 4))

    g = assert_permutation_invariant(Net(), torch.randn(3, 5, 4))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert a.frozen is not None and "over the channel dim" in a.frozen
