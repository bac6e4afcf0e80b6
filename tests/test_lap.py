"""The LAP helper agrees with brute force over all permutations (and over block-respecting ones)."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsurgery.plan.solvers.lap import assignment_value, best_permutation


def brute(score: torch.Tensor, block: int) -> float:
    d = score.shape[0]
    best = -float("inf")
    for p in itertools.permutations(range(d)):
        if all(p[i] // block == i // block for i in range(d)):
            best = max(best, assignment_value(score, torch.tensor(p)))
    return best


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_matches_brute_force(d: int, seed: int) -> None:
    score = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    perm = best_permutation(score, d)
    assert sorted(perm.tolist()) == list(range(d))
    assert abs(assignment_value(score, perm) - brute(score, d)) < 1e-9


@settings(max_examples=20, deadline=None)
@given(blocks=st.integers(1, 3), size=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_blocks_match_brute_force(blocks: int, size: int, seed: int) -> None:
    d = blocks * size
    score = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    perm = best_permutation(score, size)
    assert torch.equal(perm // size, torch.arange(d) // size)
    assert abs(assignment_value(score, perm) - brute(score, size)) < 1e-9
