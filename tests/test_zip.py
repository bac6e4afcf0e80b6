"""ZipIt! greedy zipping: the incremental solver against the plain procedure, the decay, the elastic budget."""

from __future__ import annotations

import pytest
import torch

from hetsurgery.plan.solvers.zip import zip_match


def plain_zipit(sim: torch.Tensor, widths: tuple[int, int], alpha: float, r: int) -> list[list[int]]:
    """ZipIt for two models with no binding budget, step by step on the whole matrix: merge the most
    similar pair, the merged row is ``alpha * min`` of its parts, drop the other row and column."""
    s = sim.clone().double()
    s.fill_diagonal_(float("-inf"))
    clusters = [[i] for i in range(sum(widths))]
    while len(clusters) > r:
        flat = int(s.argmax())
        i, j = sorted(divmod(flat, s.shape[0]))
        row = alpha * torch.minimum(s[i], s[j])
        s[i], s[:, i] = row, row
        s[i, i] = float("-inf")
        keep = [k for k in range(s.shape[0]) if k != j]
        s = s[keep][:, keep]
        clusters[i] += clusters.pop(j)
    return sorted(sorted(c) for c in clusters)


def correlated(widths: tuple[int, ...], seed: int) -> torch.Tensor:
    """A correlation matrix of features that share a few latent causes (many strong pairs, no ties)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    feats = latent @ torch.randn(6, sum(widths), generator=gen, dtype=torch.float64)
    feats += 0.5 * torch.randn(feats.shape, generator=gen, dtype=torch.float64)
    return torch.corrcoef(feats.T)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("seed", range(8))
def test_two_models_zip_like_the_plain_procedure(alpha: float, seed: int) -> None:
    widths = (6, 6)
    sim = correlated(widths, seed)
    # beta=2: each model may take every merge, so no budget binds and the two procedures must agree
    got = zip_match(0, sim, widths, (0.5, 0.5), alpha=alpha, beta=2.0).info["clusters"]
    assert sorted(got) == plain_zipit(sim, widths, alpha, r=6)


def test_a_zipped_pair_merges_again_only_at_a_discount() -> None:
    # a0~a1 0.9, both ~b0 0.8, b0~b1 0.7: after a0+a1, {a0,a1}~b0 decays to 0.4 and b0+b1 goes first
    sim = torch.full((4, 4), 0.1, dtype=torch.float64)
    for i, j, v in ((0, 1, 0.9), (0, 2, 0.8), (1, 2, 0.8), (2, 3, 0.7)):
        sim[i, j] = sim[j, i] = v
    assert zip_match(0, sim, (2, 2), (0.5, 0.5), alpha=0.5).info["clusters"] == [[0, 1], [2, 3]]
    assert zip_match(0, sim, (2, 2), (0.5, 0.5), alpha=1.0).info["clusters"] == [[0, 1, 2], [3]]


def test_elastic_budget_is_proportional_to_each_models_width() -> None:
    # every feature prefers its own model: the greedy spends each model's whole budget inside it
    widths = (4, 12)
    sim = torch.full((16, 16), -0.5, dtype=torch.float64)
    sim[:4, :4] = 0.9
    sim[4:, 4:] = 0.9
    sim += 1e-3 * correlated(widths, 0)  # break ties
    match = zip_match(0, sim, widths, (0.5, 0.5), beta=1.0)  # r = 12, 4 merges, budgets 1 and 3
    within = [len(c) - 1 for c in match.info["clusters"] if len(c) > 1]
    inside = {0: 0, 1: 0}
    for c in match.info["clusters"]:
        for k, (lo, hi) in enumerate(((0, 4), (4, 16))):
            inside[k] += max(sum(lo <= f < hi for f in c) - 1, 0)
    assert sum(within) == 4 and inside == {0: 1, 1: 3}


def test_copies_of_one_model_zip_back_exactly_with_three_models() -> None:
    d = 5
    base = correlated((d,), 3)
    sim = base.repeat(3, 3)  # three identical models: feature i of each correlates 1 with the others'
    sim += 1e-9 * torch.eye(3 * d, dtype=torch.float64)
    clusters = zip_match(0, sim, (d, d, d), (1 / 3, 1 / 3, 1 / 3), alpha=0.5).info["clusters"]
    assert clusters == [[i, i + d, i + 2 * d] for i in range(d)]
