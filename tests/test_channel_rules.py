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
