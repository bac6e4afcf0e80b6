"""CLA, SMA and LMA equal brute force over all strictly increasing maps; segments, insertions and fusions."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from hetsurgery.plan.depth import (
    SOLVERS,
    Balance,
    DepthError,
    DepthMethod,
    cla,
    fusions,
    insertions,
    lma,
    objective,
    positions,
    segments,
    sma,
    solve,
    width_cost,
)

SIZES = [(m, n) for n in range(1, 8) for m in range(1, n + 1)]  # 28 shapes, m = 1 and m = n included


def _maps(method: DepthMethod, m: int, n: int) -> Iterator[tuple[int, ...]]:
    """Every strictly increasing map the method allows, in lexicographic order."""
    for f in itertools.combinations(range(n), m):
        if method is DepthMethod.CLA:
            if f[0] == 0 and (m == 1 or f[-1] == n - 1):  # first↔first; last↔last unless m = 1
                yield f
        elif f[-1] == n - 1:  # the segments cover the deep stage
            yield f


def _value(method: DepthMethod, s: Sequence[Sequence[float]], f: tuple[int, ...]) -> float:
    if method is DepthMethod.LMA:  # every unit of (f[i-1], f[i]] against row i
        bounds = [-1, *f]
        return sum(s[i][j] for i in range(len(f)) for j in range(bounds[i] + 1, bounds[i + 1] + 1))
    return sum(s[i][j] for i, j in enumerate(f))


def _oracle(method: DepthMethod, s: Sequence[Sequence[float]]) -> tuple[tuple[int, ...], float, int]:
    """(lexicographically first optimal map, its value, how many maps reach it); SMA's ties go first to the
    best LMA value."""
    scored = [(f, _value(method, s, f)) for f in _maps(method, len(s), len(s[0]))]
    best = (max if method.maximises else min)(v for _, v in scored)
    optimal = [f for f, v in scored if v == best]
    if method is DepthMethod.SMA:
        inner = max(_value(DepthMethod.LMA, s, f) for f in optimal)
        return next(f for f in optimal if _value(DepthMethod.LMA, s, f) == inner), best, len(optimal)
    return optimal[0], best, len(optimal)


@pytest.mark.parametrize("method", list(DepthMethod))
def test_equals_brute_force_exactly_on_a_grid_with_ties(method: DepthMethod) -> None:
    rng = random.Random(f"grid-{method.value}")
    ties = 0
    for m, n in SIZES:
        for k in range(8):  # 224 matrices per method; quarters sum exactly, so ties are real ties
            levels = 2 if k % 2 else 8  # few levels: many ties
            s = [[rng.randint(0, levels) / 4 - 1 for _ in range(n)] for _ in range(m)]
            f, best, count = _oracle(method, s)
            got = solve(method, s)
            assert (got.map, got.objective) == (f, best), (s, got)
            ties += count > 1
    assert ties > 20  # the tie rule was exercised


@pytest.mark.parametrize("method", list(DepthMethod))
def test_equals_brute_force_on_random_floats(method: DepthMethod) -> None:
    rng = np.random.default_rng(list(DepthMethod).index(method))
    for m, n in SIZES:
        for _ in range(3):
            s = rng.random((m, n))
            rows = s.tolist()
            scored = sorted(((_value(method, rows, f), f) for f in _maps(method, m, n)),
                            reverse=method.maximises)
            got = solve(method, torch.from_numpy(s))  # tensors are accepted
            assert got.objective == pytest.approx(scored[0][0], abs=1e-12)
            if len(scored) == 1 or abs(scored[0][0] - scored[1][0]) > 1e-9:
                assert got.map == scored[0][1]


@pytest.mark.parametrize("method", list(DepthMethod))
def test_ties_go_to_the_earliest_map(method: DepthMethod) -> None:
    assert solve(method, np.zeros((3, 6))).map == (0, 1, 5)  # SMA: LMA's objective ties too
    assert solve(method, np.zeros((1, 4))).map == ((0,) if method is DepthMethod.CLA else (3,))
    assert solve(method, np.ones((4, 4))).map == (0, 1, 2, 3)  # m = n: the identity, the only map


def test_cla_reproduces_the_clafusion_examples() -> None:
    # Fig. 2: widths 5, 4, 3, 1 (deeper) and 3, 2, 1 (shallower), squared difference: a = (1, 3, 4)
    assert cla(width_cost([3, 2, 1], [5, 4, 3, 1])).map == (0, 2, 3)
    # Table 9, both constraints: 400-200-100-50-25 against 400-200-100 gives [1, 2, 5]
    got = cla(width_cost([400, 200, 100], [400, 200, 100, 50, 25]))
    assert got.map == (0, 1, 4) and got.objective == 75.0**2
    # m = 1: "we prioritize the first layer over the last layer"
    assert cla([[5.0, 0.0, 0.0]]).map == (0,)


def test_sma_and_lma_differ_as_the_paper_says() -> None:
    # deep unit 0 resembles shallow unit 0 most, deep unit 1 somewhat: SMA sees only the segment's end,
    # LMA counts every unit of the segment
    sim = [[0.9, 0.5, 0.1, 0.1, 0.5],
           [0.1, 0.1, 0.9, 0.9, 0.4]]
    assert sma(sim).map == (0, 4) and sma(sim).objective == pytest.approx(1.3)
    assert lma(sim).map == (1, 4) and lma(sim).objective == pytest.approx(0.9 + 0.5 + 0.9 + 0.9 + 0.4)


def test_sma_breaks_its_ties_by_the_layer_wise_objective() -> None:
    # deep unit 2 copies deep unit 1 (an identity layer): SMA's own objective cannot tell whether it
    # belongs to shallow unit 1's segment or to unit 2's; the segment whose inner units fit wins
    sim = [[1.0, 0.2, 0.2, 0.1],
           [0.2, 1.0, 1.0, 0.3],
           [0.1, 0.3, 0.3, 1.0]]
    assert sma(sim).map == (0, 2, 3) and sma(sim).objective == 3.0


def test_lma_finds_a_block_structure_that_the_released_recurrence_misses() -> None:
    # deep units 0-1 resemble shallow unit 0 and 2-3 shallow unit 1: the segments are {0, 1}, {2, 3}.
    # The released recurrence (skipped units scored against the previous column) returns (0, 3).
    sim = [[0.9, 0.9, 0.2, 0.2],
           [0.2, 0.2, 0.9, 0.9]]
    assert lma(sim).map == (1, 3) and lma(sim).objective == pytest.approx(3.6)
    assert objective(DepthMethod.LMA, sim, (0, 3)) == pytest.approx(2.9)


def test_dispatch_table_covers_every_method() -> None:
    assert set(SOLVERS) == set(DepthMethod)
    s = [[0.5, 0.25, 0.75], [0.0, 1.0, 0.5]]
    for method, solver in SOLVERS.items():
        assert solve(method, s) == solver(s)
    assert {m.value for m in DepthMethod} == {"cla", "sma", "lma"}
    assert {b.value for b in Balance} == {"add", "merge"}
    assert [m.maximises for m in DepthMethod] == [False, True, True]


def test_bad_matrices_and_maps_are_refused() -> None:
    with pytest.raises(DepthError, match="1 <= m <= n"):
        sma(np.zeros((3, 2)))
    with pytest.raises(DepthError, match="1 <= m <= n"):
        cla(np.zeros((0, 2)))
    with pytest.raises(DepthError, match="NaN"):
        lma([[0.0, float("nan")]])
    with pytest.raises(DepthError, match="fixes f\\[0\\] = 0"):
        objective(DepthMethod.CLA, np.zeros((2, 3)), (1, 2))
    with pytest.raises(DepthError, match="fixes"):
        objective(DepthMethod.SMA, np.zeros((2, 3)), (0, 1))
    with pytest.raises(DepthError, match="strictly increasing"):
        objective(DepthMethod.SMA, np.zeros((2, 3)), (2, 2))
    with pytest.raises(DepthError, match="needs 2 ints"):
        objective(DepthMethod.SMA, np.zeros((2, 3)), (0.0, 2))


def _all_maps() -> Iterator[tuple[DepthMethod, int, tuple[int, ...]]]:
    for method in DepthMethod:
        for m, n in SIZES:
            for f in _maps(method, m, n):
                yield method, n, f


def test_segments_partition_the_deep_stage_and_end_at_the_matches() -> None:
    for method, n, f in _all_maps():
        segs = segments(f, n)
        assert [j for seg in segs for j in seg] == list(range(n))
        assert all(seg for seg in segs)
        if not (method is DepthMethod.CLA and len(f) == 1):
            assert tuple(seg[-1] for seg in segs) == f
        else:  # CLA, one shallow unit: matched to the first deep unit, standing for all of them
            assert f == (0,) and segs == (tuple(range(n)),)


def test_add_gives_the_shallow_stage_n_units_with_each_unit_where_its_method_puts_it() -> None:
    for method, n, f in _all_maps():
        m = len(f)
        after = {s.after: s.count for s in insertions(method, f, n)}
        assert all(c > 0 for c in after.values())
        stage: list[int | None] = []  # a shallow unit's index, or None for an inserted identity
        for i in range(m):
            stage += [i] + [None] * after.get(i, 0)
        assert len(stage) == n and stage[0] == 0  # nothing is ever inserted before the first unit
        p = positions(method, f, n)
        assert tuple(stage.index(i) for i in range(m)) == p
        carrier = [max(i for i in range(m) if p[i] <= j) for j in range(n)]  # whose output position j holds
        if method is DepthMethod.CLA:
            assert p == f  # CLAFusion: unit i meets f[i], the identities follow it
        else:  # Xu et al.: unit i first in its segment, its output carried through the whole segment
            for i, seg in enumerate(segments(f, n)):
                assert p[i] == seg[0] and all(carrier[j] == i for j in seg)
        assert all(carrier[j] == i for i, j in enumerate(f))  # each match compares unit i's output


def test_merge_fuses_each_segment_into_one_unit_ending_at_its_match() -> None:
    for method, n, f in _all_maps():
        fused = {s.shallow: s.deep for s in fusions(method, f, n)}
        units = []  # the deep stage after merging: one tuple of deep units per remaining unit
        j = 0
        for i in range(len(f)):
            run = fused.get(i, (j,))
            assert run[0] == j and run == tuple(range(run[0], run[-1] + 1))
            units.append(run)
            j = run[-1] + 1
        assert j == n and len(units) == len(f)
        assert all(len(run) > 1 for run in fused.values())
        if not (method is DepthMethod.CLA and len(f) == 1):
            assert tuple(run[-1] for run in units) == f  # the fused unit outputs what f[i] did


def test_balance_helpers_refuse_maps_their_method_forbids() -> None:
    with pytest.raises(DepthError):
        positions(DepthMethod.CLA, (1, 2), 3)
    with pytest.raises(DepthError):
        fusions(DepthMethod.LMA, (0, 1), 3)
