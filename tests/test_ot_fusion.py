"""OT fusion (OTFusion as CLAFusion runs it, ``solvers.ot``): a permuted copy and a Net2Net widening come back
exactly; the coupling against brute force; copies of a neuron share one neuron's mass; the maps keep a
widening exact.

"Gives the model back" means, for a model ``N`` and ``W`` that computes ``N``'s function with other weights:
merged onto ``N``'s widths the merged parameters *are* ``N``'s (same neurons, same order); merged onto ``W``'s
widths the merged model is another widening of ``N``, so it computes ``N``'s function.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import permuted, rel_err, widened
from torch import nn

import hetsurgery as hs
from hetsurgery.plan.solvers.ot import Neurons, coupling, maps_of, point_mass

X = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
COSTS = {"activations": {}, "weights": {"cost": "weights"}}


def bias_free_mlp(seed: int, hidden: tuple[int, ...] = (7, 5)) -> nn.Module:
    """CLAFusion's setting: Linear(bias=False)-ReLU layers and a bias-free head, every hidden unit alive on X."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = X.shape[1]
    for w in hidden:
        layers += [nn.Linear(prev, w, bias=False), nn.ReLU()]
        prev = w
    model = nn.Sequential(*layers, nn.Linear(prev, 3, bias=False)).eval()
    h = X
    with torch.no_grad():
        for layer in model:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                assert bool((h > 0).any(0).all()), "a dead unit: pick another seed"
    return model


def ot_groups(r: hs.MergeResult) -> list:
    return [m for m in r.plan.groups.values() if m.info.get("kind") == "ot"]


@pytest.mark.parametrize("cost", sorted(COSTS))
def test_ot_on_a_permuted_copy_gives_the_model_back(cost: str) -> None:
    model = bias_free_mlp(0)
    twin = hs.to_module(permuted(hs.trace(model, X[:2]), seed=3)).eval()
    r = hs.merge([model, twin], [X], method="ot", progress=False, **COSTS[cost])
    for m in ot_groups(r):  # a permutation: each merged neuron is fed by one neuron of the twin
        assert bool(((m.merge[1] != 0).sum(1) == 1).all())
    merged = dict(r.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(merged[name], p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cost", sorted(COSTS))
def test_ot_on_a_net2net_widening_gives_the_model_back(cost: str) -> None:
    """W: three random neurons of each layer of N duplicated (7 -> 10 and 5 -> 8: uneven copy counts, which
    OTFusion's per-neuron marginals cannot carry), their outgoing weights split by random shares, every layer
    permuted. Onto N's widths the merge is N itself, for every weighting; onto W's it computes N."""
    narrow = bias_free_mlp(1)
    wide = hs.to_module(widened(hs.trace(narrow, X[:2]), extra=3, seed=4)).eval()
    with torch.no_grad():
        reference = narrow(X)
        assert rel_err(reference, wide(X)) < 1e-5  # the widening is exact
    for weights in ([0.5, 0.5], [0.0, 1.0], [0.3, 0.7]):
        onto_narrow = hs.merge([narrow, wide], [X], method="ot", weights=weights, width=0, progress=False,
                               **COSTS[cost]).model
        merged = dict(onto_narrow.named_parameters())
        for name, p in narrow.named_parameters():
            torch.testing.assert_close(merged[name], p, rtol=1e-5, atol=1e-6)
        onto_wide = hs.merge([narrow, wide], [X], method="ot", weights=weights, width=1, progress=False,
                             **COSTS[cost]).model
        with torch.no_grad():
            assert rel_err(reference, onto_wide(X)) < 1e-5, (weights, rel_err(reference, onto_wide(X)))


def test_per_neuron_marginals_cannot_give_an_unbalanced_widening_back() -> None:
    """OTFusion's marginals (1/3 per neuron of W) against ours (W's copies of neuron 0 share its 1/2)."""
    import ot

    cost = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # W's rows 0, 1 copy N's 0
    exact = torch.tensor([[0.25, 0.0], [0.25, 0.0], [0.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(coupling(cost), exact, rtol=0, atol=1e-15)
    uniform = torch.from_numpy(ot.emd(torch.full((3,), 1 / 3).double().numpy(), torch.full((2,), 0.5).double().numpy(),
                                      cost.numpy()))
    assert float((uniform * cost).sum()) == pytest.approx(1 / 6)  # a sixth of N's neuron 0 must land on neuron 1


def test_emd_on_equal_widths_is_the_brute_force_assignment() -> None:
    gen = torch.Generator().manual_seed(5)
    for n in range(1, 7):
        for _ in range(3):
            cost = torch.rand(n, n, dtype=torch.float64, generator=gen)
            t = coupling(cost) * n
            assert bool(((t == 0) | (t.sub(1).abs() < 1e-12)).all()) and bool((t.sum(0).sub(1).abs() < 1e-12).all())
            best = min(sum(float(cost[i, p[i]]) for i in range(n)) for p in itertools.permutations(range(n)))
            assert float((t * cost).sum()) == pytest.approx(best, abs=1e-12)


def test_copies_share_one_neurons_mass() -> None:
    c = torch.tensor([[1.0, 2.0], [3.0, 0.0], [1.0, 2.0 + 1e-9], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    # rows 0 and 2 are one point (within 1e-7 of the largest cost); 3 and 4 are too, but constant features
    # without own parameters are all alike, so they keep a neuron's mass each
    live = torch.tensor([True, True, True, False, False])
    assert point_mass(c, Neurons(live)).tolist() == pytest.approx([1 / 8, 1 / 4, 1 / 8, 1 / 4, 1 / 4])
    same, other = torch.tensor([[0.5], [0.5]]), torch.tensor([[0.5], [0.7]])
    own = torch.cat([torch.tensor([[0.1], [0.2], [0.1]]), same])  # equal biases: the dead copies are one point
    assert point_mass(c, Neurons(live, own)).tolist() == pytest.approx([1 / 6, 1 / 3, 1 / 6, 1 / 6, 1 / 6])
    own = torch.cat([torch.tensor([[0.1], [0.2], [0.3]]), other])  # own parameters differ: no copies at all
    assert point_mass(c, Neurons(live, own)).tolist() == pytest.approx([1 / 5] * 5)


def test_maps_carry_a_narrow_model_onto_a_wide_one_exactly() -> None:
    """Two neurons onto six, balanced: T copies each three times, U M = I: the carried model is exact;
    OTFusion's T diag(1/b) on the outgoing side would be 3 U, the next layer fed three times its input. The
    partial transport carries each neuron onto one target, also exactly."""
    cost = torch.tensor([[0.0, 1.0, 0.1, 1.1, 0.2, 1.2], [1.0, 0.0, 1.1, 0.1, 1.2, 0.2]], dtype=torch.float64)
    t = coupling(cost, marginals="balanced")
    merge, unmerge = maps_of(t, 0.5)
    torch.testing.assert_close(unmerge @ merge, 0.5 * torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)
    otfusion = t / t.sum(0, keepdim=True)
    torch.testing.assert_close(otfusion, 3 * unmerge, rtol=0, atol=1e-12)
    partial = coupling(cost)
    assert partial.mul(6).tolist() == [[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]]
    merge, unmerge = maps_of(partial, 0.5)
    torch.testing.assert_close(unmerge @ merge, 0.5 * torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_on_equal_widths_ot_and_permute_differ_only_by_the_ground_metric() -> None:
    """OT with uniform marginals on equal widths is an assignment: on the correlation distance 1 - ρ it is
    permute's; ot's euclidean distance also weighs the features' scale, and may pair them otherwise."""
    from hetsurgery.ir import Blocks
    from hetsurgery.plan.solvers.permute import permute
    from hetsurgery.plan.stats import GroupStats

    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        x = torch.randn(300, 9, generator=gen) @ torch.randn(9, 9, generator=gen)
        y = x[:, torch.randperm(9, generator=gen)] * (torch.rand(9, generator=gen) * 3) + torch.randn(300, 9, generator=gen)
        both = torch.cat([x, y], 1).double()
        stats = GroupStats((9, 9), 300, both.mean(0), torch.cov(both.T))
        t = coupling(1 - stats.block(stats.corr(), 1, 0))
        assert torch.equal(t.argmax(0), permute(0, stats, Blocks(1, 9), (0.5, 0.5)).perms[1])


def test_pre_activation_sites_observe_what_enters_the_nonlinearity() -> None:
    """OTFusion's ``--prelu-acts``: the statistics on ``pre_activation(g)`` are the moments of the Linear outputs
    (of the BatchNorm outputs when a BatchNorm comes between); sites after no activation stay where they are."""
    from hetsurgery.plan.solvers.ot_sites import pre_activation
    from hetsurgery.plan.stats import collect_stats

    model = bias_free_mlp(0)
    g = hs.trace(model, X[:2])
    stats = collect_stats([pre_activation(g)] * 2, [X], progress=False)
    first = next(grp.id for grp in g.permutable() if grp.size == 7)
    with torch.no_grad():
        z = model[0](X).double()
    torch.testing.assert_close(stats[first].mean[:7], z.mean(0))
    torch.testing.assert_close(stats[first].block(stats[first].cov, 0, 0), torch.cov(z.T))

    bn = hs.trace(hs.zoo.mlp([6], in_features=12, batch_norm=True), X[:2])
    facts = bn.facts
    moved = 0
    for before, after in zip(bn.groups, pre_activation(bn).groups, strict=True):
        for s, t in zip(before.sites, after.sites, strict=True):
            activation = facts[s.node].activation
            assert (t.node != s.node) == (activation is not None and activation.value != "identity")
            if t.node != s.node:
                assert facts[t.node].kind is hs.OpKind.BATCH_NORM
                moved += 1
    assert moved == 1  # the hidden layer's ReLU output, moved to its BatchNorm's output
