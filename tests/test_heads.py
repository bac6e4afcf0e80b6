"""Attention heads as units: whole heads move (q, k, v rows and o columns of head h together), rotary embeddings
fix the order inside each head, grouped-query attention lays the query heads over their key heads, a learned
per-head bias moves with its heads; merges find the heads of a head-permuted copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from decoder_models import BiasedAttention, Conv1DStack, RotaryDecoder
from helpers import heads_reversed, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations

IDS = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(0))
OTHER = torch.randint(0, 40, (5, 4), generator=torch.Generator().manual_seed(1))  # another batch and length


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _heads(g: hs.ModelGraph, param: str) -> hs.PermGroup:
    return next(grp for grp in g.groups if any(s.param == param and s.dim == 0 for s in grp.slots))


def _moves_heads(perm: torch.Tensor, blocks: hs.Blocks) -> bool:
    return not torch.equal(blocks.order_of(perm), torch.arange(blocks.count))



@pytest.mark.parametrize(("mode", "kv_heads"), [("sdpa", 2), ("gqa", 2), ("eager", 2), ("eager", 4), ("sdpa", 4)])
def test_rotary_grouped_query_attention_moves_whole_heads(mode: str, kv_heads: int) -> None:
    model = _perturbed(RotaryDecoder(mode=mode, kv_heads=kv_heads))
    g = hs.trace(model, IDS)
    assert g.coverage() == 1.0, g.summary()
    qk, vo = _heads(g, "layers.0.attn.k_proj.weight"), _heads(g, "layers.0.attn.v_proj.weight")
    assert qk.structure == hs.Blocks(kv_heads, 8, moves=True, inner=False)  # rotary: whole heads only
    assert vo.structure == hs.Blocks(kv_heads, 8, moves=True)
    assert qk.heads_with == (vo.id,) and vo.heads_with == (qk.id,)
    rep = 4 // kv_heads  # each key head serves `rep` query heads: the query rows repeat the key group
    q_rows = sorted(s.offset for s in qk.slots if s.param == "layers.0.attn.q_proj.weight")
    assert q_rows == [8 * r for r in range(rep)]
    perms = heads_reversed(g, random_permutations(g, seed=3))
    moved = hs.to_module(ApplyPermutation(perms)(g))
    with torch.no_grad():
        for x in (IDS, OTHER):
            assert rel_err(model(x), moved(x)) <= 1e-5


def test_heads_move_together_or_not_at_all() -> None:
    g = hs.trace(_perturbed(RotaryDecoder(mode="sdpa", kv_heads=2)), IDS)
    qk, vo = _heads(g, "layers.0.attn.k_proj.weight"), _heads(g, "layers.0.attn.v_proj.weight")
    swap = torch.cat([torch.arange(8, 16), torch.arange(8)])
    with pytest.raises(hs.PassError, match="the same attention heads"):
        ApplyPermutation({qk.id: swap})(g)  # q/k heads swapped, v/o heads not
    ApplyPermutation({qk.id: swap, vo.id: swap})(g)
    inside = torch.cat([torch.arange(8).flip(0), torch.arange(8, 16)])
    ApplyPermutation({vo.id: inside})(g)  # v/o may reorder inside a head
    with pytest.raises(hs.PassError, match="inside its blocks"):
        ApplyPermutation({qk.id: inside})(g)  # rotary embedding: q/k may not


def test_a_learned_bias_per_head_moves_with_its_heads() -> None:
    model = _perturbed(BiasedAttention())
    g = hs.trace(model, IDS)
    assert g.coverage() == 1.0, g.summary()
    bias = next(grp for grp in g.groups if hs.Slot("bias.weight", 1) in grp.slots)
    qk = _heads(g, "q.weight")
    assert bias.structure == hs.Blocks(2, 1, moves=True) and bias.id in qk.heads_with
    perms = random_permutations(g, seed=0)
    perms[qk.id] = torch.cat([torch.arange(8, 16), torch.arange(8)])  # the two heads trade places
    for gid in (bias.id, *qk.heads_with):
        b = g.group(gid).structure
        perms[gid] = torch.cat([torch.arange(b.size) + b.size, torch.arange(b.size)])
    moved = hs.to_module(ApplyPermutation(perms)(g))
    with torch.no_grad():
        assert rel_err(model(OTHER), moved(OTHER)) <= 1e-5


def test_gpt2_conv1d_is_a_layer() -> None:
    model = _perturbed(Conv1DStack())
    g = hs.trace(model, IDS)
    assert g.coverage() == 1.0, g.summary()
    hidden = next(grp for grp in g.groups if hs.Slot("c_fc.weight", 1) in grp.slots)
    assert hs.Slot("c_out.weight", 0, role=hs.Role.CONSUME) in hidden.slots and hidden.perm_ok
    moved = hs.to_module(ApplyPermutation(random_permutations(g, seed=2))(g))
    with torch.no_grad():
        assert rel_err(model(OTHER), moved(OTHER)) <= 1e-5


@pytest.mark.parametrize("method", ["permute", "zip", "weight", "ot", "mal"])
def test_a_head_permuted_copy_merges_back_exactly(method: str) -> None:
    model = _perturbed(RotaryDecoder(mode="sdpa", kv_heads=2, depth=1))
    g = hs.trace(model, IDS)
    perms = heads_reversed(g, random_permutations(g, seed=5))
    qk = _heads(g, "layers.0.attn.k_proj.weight")
    assert _moves_heads(perms[qk.id], qk.structure)
    copy = hs.to_module(ApplyPermutation(perms)(g)).eval()
    data = [torch.randint(0, 40, (8, 6), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    merged = hs.merge([model, copy], data, method=method, progress=False).model
    with torch.no_grad():
        assert rel_err(model(OTHER), merged(OTHER)) <= 1e-4


class UnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.fft.fft(F.relu(self.a(x))).real)


def test_every_uncovered_parameter_has_a_reason() -> None:
    g = hs.trace(UnknownOp(), torch.randn(2, 4), probe=False)
    missing = g.uncovered()
    assert set(missing) == {"a.weight", "a.bias", "b.weight"}
    assert all("fft" in why and "node fft" in why for why in missing.values()), missing
    assert "3 parameters not covered" in g.summary() and "a.weight: " in g.summary()


class OnlyUnknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.w, x.T).T


def test_coverage_zero_warns_with_the_most_common_reason() -> None:
    with pytest.warns(UserWarning, match=r"coverage 0\.000.*solve"):
        g = hs.trace(OnlyUnknown(), torch.randn(2, 4), probe=False)
    assert "solve" in g.uncovered()["w"]


class _Split(nn.Module):
    """The first head's query channels also feed another layer: a cut splits the tied q/k group."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(5))
        self.side, self.head = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        b, n, _ = x.shape
        q = self.q(x)
        qh, kh, vh = (t.view(b, n, 2, 4).transpose(1, 2) for t in (q, self.k(x), self.v(x)))
        a = (torch.softmax(qh @ kh.transpose(-2, -1), dim=-1) @ vh).transpose(1, 2).reshape(b, n, 8)
        return self.head(self.o(a) + self.side(q[..., :4]))


class _KeysFirst(nn.Module):
    """Attention weights written keys-first and used as the right operand: ``(vᵀ @ softmax(k qᵀ, -2))ᵀ``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(5))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        b, n, _ = x.shape
        qh, kh, vh = (t.view(b, n, 2, 4).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        w = torch.softmax(kh @ qh.transpose(-2, -1), dim=-2)
        a = (vh.transpose(-2, -1) @ w).transpose(-2, -1)
        return self.head(self.o(a.transpose(1, 2).reshape(b, n, 8)))


class _TwoViews(nn.Module):
    """q read as 4 heads of 2 by the attention and as 2 blocks of 4 by a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.q, self.k, self.v, self.o, self.side = (nn.Linear(8, 8) for _ in range(6))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        b, n, _ = x.shape
        q = self.q(x)
        qh, kh, vh = (t.view(b, n, 4, 2).transpose(1, 2) for t in (q, self.k(x), self.v(x)))
        a = torch.softmax(qh @ kh.transpose(-2, -1), dim=-1) @ vh
        g = torch.softmax(q.view(b, n, 2, 4), dim=-1).reshape(b, n, 8)
        return self.head(self.o(a.transpose(1, 2).reshape(b, n, 8)) + self.side(g))


class _WeightReadAsValue(nn.Module):
    """A Linear's weight also read as a plain value by an op no rule knows (a regulariser in the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + torch.diff(self.fc1.weight, dim=0).abs().sum()


@pytest.mark.parametrize("make", [_Split, _KeysFirst, _TwoViews])
def test_heads_stay_in_place_where_the_rules_cannot_follow_them(make) -> None:
    model = _perturbed(make())
    x = torch.randn(2, 5, 8)
    g = hs.trace(model, x)
    q = next(grp for grp in g.groups if any(s.param == "q.weight" and s.dim == 0 for s in grp.slots))
    assert not q.structure.moves, g.summary()
    for seed in range(3):
        moved = hs.to_module(ApplyPermutation(random_permutations(g, seed))(g))
        with torch.no_grad():
            assert rel_err(model(x), moved(x)) <= 1e-5


def test_a_weight_also_read_as_a_plain_value_is_frozen() -> None:
    g = hs.trace(_WeightReadAsValue(), torch.randn(3, 4))
    hidden = next(grp for grp in g.groups if hs.Slot("fc1.weight", 0) in grp.slots)
    assert hidden.frozen is not None and "read as a plain value" in hidden.frozen and "diff" in hidden.frozen
