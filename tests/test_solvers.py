"""Solvers against planted answers: permute and zip recover a planted permutation, OT maps are stochastic."""

from __future__ import annotations

import pytest
import torch

from hetsurgery.ir import Blocks
from hetsurgery.plan.solvers.ot import as_means, coupling, feature_distance, maps_of, ot_match, transport
from hetsurgery.plan.solvers.permute import permute
from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats


def planted(d: int, seed: int, noise: float = 0.05) -> tuple[GroupStats, torch.Tensor]:
    """Features of model 1 are model 0's in the order ``perm`` (new channel i = old perm[i]), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(400, d, generator=gen) @ torch.randn(d, d, generator=gen) * 0.3 + torch.randn(400, d, generator=gen)
    perm = torch.randperm(d, generator=gen)
    y = x[:, perm] + noise * torch.randn(400, d, generator=gen)
    both = torch.cat([x, y], 1).double()
    return GroupStats((d, d), 400, both.mean(0), torch.cov(both.T)), perm


def test_permute_recovers_planted_permutation() -> None:
    for seed in range(5):
        stats, perm = planted(12, seed)
        m = permute(0, stats, Blocks(1, 12), (0.5, 0.5))
        # merged channel i is model 0's channel i and model 1's channel perm⁻¹(i)
        assert m.info["perms"][1] == torch.argsort(perm).tolist()
        assert torch.equal(m.unmerge[1] @ m.merge[1] * 2, torch.eye(12, dtype=torch.float64))


def test_zip_recovers_planted_permutation() -> None:
    for seed in range(5):
        stats, perm = planted(10, seed)
        m = zip_match(0, stats.corr(), (10, 10), (0.5, 0.5), alpha=0.5, beta=0.5)
        inverse = torch.argsort(perm)
        assert m.info["clusters"] == [[i, 10 + int(inverse[i])] for i in range(10)]
        assert m.info["within_model_clusters"] == 0


def test_zip_matrices_average_cluster_members() -> None:
    stats, _ = planted(6, 0, noise=1.0)
    m = zip_match(0, stats.corr(), (6, 6), (0.25, 0.75), alpha=0.1, beta=1.0)
    merge = torch.cat(m.merge, 1)
    unmerge = torch.cat(m.unmerge, 0)
    assert merge.shape == (6, 12) and unmerge.shape == (12, 6)
    torch.testing.assert_close(merge.sum(1), torch.ones(6, dtype=torch.float64))  # a weighted mean per cluster
    assert torch.equal(unmerge.sum(1), torch.ones(12, dtype=torch.float64))  # every feature in one cluster


def test_zip_beta_zero_forbids_within_model_merges() -> None:
    corr = torch.eye(4, dtype=torch.float64)
    corr[0, 1] = corr[1, 0] = 0.99  # model 0's two features are near duplicates
    corr[2, 3] = corr[3, 2] = 0.98
    corr[0, 2] = corr[2, 0] = corr[1, 3] = corr[3, 1] = 0.1
    free = zip_match(0, corr, (2, 2), (0.5, 0.5), beta=1.0)
    assert free.info["clusters"] == [[0, 1], [2, 3]]
    strict = zip_match(0, corr, (2, 2), (0.5, 0.5), beta=0.0)
    assert strict.info["clusters"] == [[0, 2], [1, 3]]


def test_ot_columns_sum_to_one_and_recover_permutation() -> None:
    stats, perm = planted(8, 3)
    m = ot_match(0, stats, Blocks(1, 8), (0.5, 0.5))
    t = m.unmerge[1]
    torch.testing.assert_close(t.sum(0), torch.ones(8, dtype=torch.float64))
    # model 1's channel j is model 0's channel perm[j]: all of its mass goes there
    assert torch.equal(t.argmax(1), perm) and torch.equal(t, torch.eye(8, dtype=torch.float64)[perm])


def test_ot_maps_average_targets_and_split_sources() -> None:
    cost = torch.rand(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    for solver, reg in (("emd", 0.0), ("sinkhorn", 0.05), ("sinkhorn", 0.01)):  # 0.01: Sinkhorn stops early
        t = coupling(cost, solver, reg=reg)
        assert t.shape == (7, 4) and bool((t >= 0).all()) and abs(float(t.sum()) - 1) < 1e-12
        # uniform marginals (OTFusion's): Sinkhorn's columns exactly, its rows to its tolerance
        torch.testing.assert_close(t.sum(0), torch.full((4,), 1 / 4, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        if solver == "emd":
            torch.testing.assert_close(t.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        merge, unmerge = maps_of(t, 0.5)
        # each merged neuron is a mean of sources (times the weight); each source's outputs are split, not copied
        torch.testing.assert_close(merge.sum(1), torch.full((4,), 0.5, dtype=torch.float64))
        torch.testing.assert_close(unmerge.sum(1), torch.ones(7, dtype=torch.float64))


def test_every_ot_solver_and_cost_has_its_implementation() -> None:
    from hetsurgery.merging.methods import OT_COSTS
    from hetsurgery.merging.options import RULES
    from hetsurgery.plan.solvers.ot import COUPLINGS, PARTIAL_COUPLINGS, OTCost, OTMarginals, OTSolver

    assert set(COUPLINGS) == set(OTSolver) == set(PARTIAL_COUPLINGS) and set(OT_COSTS) == set(OTCost)
    assert all(RULES["marginals"][0](m.value) for m in OTMarginals) and not RULES["marginals"][0]("full")
    cost = torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for solver in OTSolver:  # the member or the string users write
        assert torch.equal(coupling(cost, solver, reg=0.5), coupling(cost, solver.value, reg=0.5))
    with pytest.raises(ValueError, match="unknown OT solver 'exact': use 'emd' or 'sinkhorn'"):
        coupling(cost, "exact")


def test_emd_with_unequal_widths_is_the_linear_programme_optimum() -> None:
    """Both transports against the linear programme solved by scipy: OTFusion's balanced one (uniform marginals
    met in full) and the partial one a narrower source takes (every source sends its unit of mass, no target
    receives more than one unit)."""
    from scipy.optimize import linprog

    gen = torch.Generator().manual_seed(1)
    for n, m in ((2, 3), (3, 5), (5, 2), (4, 6)):
        cost = torch.rand(n, m, dtype=torch.float64, generator=gen)
        rows = [[1.0 if k // m == i else 0.0 for k in range(n * m)] for i in range(n)]
        cols = [[1.0 if k % m == j else 0.0 for k in range(n * m)] for j in range(m)]
        best = linprog(cost.flatten().numpy(), A_eq=rows + cols, b_eq=[1 / n] * n + [1 / m] * m, method="highs").fun
        t = coupling(cost, marginals="balanced")
        torch.testing.assert_close(t.sum(1), torch.full((n,), 1 / n, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(t.sum(0), torch.full((m,), 1 / m, dtype=torch.float64), rtol=0, atol=1e-12)
        assert abs(float((t * cost).sum()) - best) < 1e-9
        partial = coupling(cost)
        if n >= m:  # the source has at least as much mass: the transport is balanced
            assert torch.equal(partial, t)
            continue
        best = linprog(cost.flatten().numpy(), A_eq=rows, b_eq=[1.0] * n, A_ub=cols, b_ub=[1.0] * m,
                       method="highs").fun
        torch.testing.assert_close(partial.sum(1), torch.full((n,), 1 / m, dtype=torch.float64), rtol=0, atol=1e-12)
        assert bool((partial.sum(0) <= 1 / m + 1e-12).all())
        assert abs(m * float((partial * cost).sum()) - best) < 1e-9


def test_partial_transport_leaves_unreached_targets_whole() -> None:
    """Two source neurons onto four targets: each source lands on its nearest target, and the two targets it
    does not reach are the target model's own neurons, whole, in the merged layer; the reached ones the mean
    of the two models' neurons, by their weights."""
    cost = torch.tensor([[0.0, 5.0, 1.0, 9.0], [5.0, 0.0, 9.0, 1.0]], dtype=torch.float64)
    plan, capacity = transport(cost)
    assert plan.mul(4).tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    merge, unmerge = maps_of(plan, 0.3, capacity)
    own, theirs = as_means([0.7 * torch.eye(4, dtype=torch.float64), merge], [0.7, 0.3])
    assert torch.allclose(own.diagonal(), torch.tensor([0.7, 0.7, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(theirs, torch.tensor([[0.3, 0], [0, 0.3], [0, 0], [0, 0]], dtype=torch.float64))
    assert torch.equal(unmerge, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64))
    entropic = transport(cost, "sinkhorn", reg=0.05)  # every source's mass exactly, no target above its own
    torch.testing.assert_close(entropic.plan.sum(1), torch.full((2,), 0.25, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((entropic.plan.sum(0) <= entropic.capacity + 1e-12).all())
    with pytest.raises(ValueError, match="unknown OT marginals 'full': use 'partial' or 'balanced'"):
        transport(cost, marginals="full")


def test_feature_distance_is_euclidean_over_samples() -> None:
    stats, _ = planted(3, 1)
    d = feature_distance(stats, 1, 0)
    m2 = stats.second_moment()
    expected = (m2[3 + 1, 3 + 1] + m2[2, 2] - 2 * m2[3 + 1, 2]).sqrt()
    assert abs(d[1, 2] - expected) < 1e-12


def test_kept_weight_matching_terms_are_the_scores_made_afresh() -> None:
    """``weight._Scores`` keeps each slot's term of a group's score until a group it depends on moves: after any
    change of permutations its scores equal ``_score`` made from nothing, and a term whose other groups did not
    move is the very tensor kept before."""
    import hetsurgery as hs
    from hetsurgery.ir import slots_by_param
    from hetsurgery.passes import random_permutations
    from hetsurgery.plan.solvers.weight import _score, _Scores

    x = torch.randn(2, 1, 8, 8)
    ga = hs.trace(hs.zoo.resnet((2, 1, 1)), x)
    torch.manual_seed(1)
    gb = hs.trace(hs.zoo.resnet((2, 1, 1)), x)
    groups = list(ga.permutable())
    by_param = {n: s for n, s in slots_by_param(groups).items() if n in ga.params}
    scores = _Scores(ga.params, gb.params, by_param)
    for seed in range(3):
        perms = random_permutations(gb, seed)
        if seed == 2:  # one group moves: the others' terms that do not read it stay as they were
            perms = {**random_permutations(gb, 1), groups[0].id: random_permutations(gb, 2)[groups[0].id]}
            before = dict(scores.terms)
        for grp in groups:
            torch.testing.assert_close(scores(grp, perms), _score(grp, ga.params, gb.params, by_param, perms),
                                       rtol=1e-12, atol=1e-9)
    kept = [key for key, (_, term) in before.items() if scores.terms[key][1] is term]
    moved = [key for key in before if key not in kept]
    assert kept and moved
    for gid, i in moved:  # remade only because the group that moved is in the slot's tensor
        slot = next(g for g in groups if g.id == gid).slots[i]
        assert any(o == groups[0].id for o, _ in by_param[slot.param])
