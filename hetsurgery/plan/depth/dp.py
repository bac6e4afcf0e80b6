"""Depth alignment of one stage pair: which unit of the deeper model each unit of the shallower one meets.

The input is a matrix with ``m`` rows, the shallower model's units in order, and ``n >= m`` columns, the
deeper model's. The answer is a strictly increasing map ``f: range(m) -> range(n)`` (shallow unit ``i``
meets deep unit ``f[i]``) and its objective. The map cuts the deeper stage into ``m`` consecutive
segments ``S_i = (f[i-1], f[i]]`` with ``f[-1] = -1``, the deep units that shallow unit ``i`` stands for
(``segments``); the last one runs to ``n - 1``.

- ``cla``, CLAFusion (Nguyen et al. 2023, Definition 1): *minimise* ``Σ_i cost[i, f[i]]`` with
  ``f[0] = 0`` and ``f[m-1] = n-1`` ("we directly match the first and last hidden layers"). The cost is
  ``1 - linear CKA`` of pre-activations or the width difference (``cka.width_cost``). For ``m = 1`` the
  two ends are one unit and the paper says "In case n = 1, we prioritize the first layer over the last
  layer": ``f = (0,)`` (its code returns ``[1]``, 1-based, too).
- ``sma``, segment-wise (Xu et al. 2025, Eq. 7): *maximise* ``Σ_i sim[i, f[i]]``, each segment's last unit
  against its shallow unit. ``f[m-1] = n-1`` so that the segments
  ``S_i^A = {L_{G_{i-1}+1}, …, L_{G_i}}`` partition the deeper model (Algorithm 1 sets
  ``G_{|L^B|} = |L^A|``); ``f[0]`` is free.
- ``lma``, layer-wise (Eq. 4 and the LMA paragraph: "alignment also occurs between the internal features
  of S_i^A and the features of L_i^B"): *maximise* ``Σ_i Σ_{j ∈ S_i} sim[i, j]``, every unit of a segment
  against its shallow unit, with the same segments.

**Where the released code of Xu et al. differs.** Its LMA recurrence (``align2``; Algorithm 2 of the
supplement) is ``T[i, j] = max(T[i, j-1] + C[j, i-1], T[i-1, j-1] + C[j, i])``. Its first branch scores
a deep unit ``j`` that comes after shallow unit ``i``'s match against column ``i - 1``: one column off
even if segments started at their match (column ``i``), two off the paper's segments (``j`` lies in
``S_{i+1}``). With 0-based arrays the first row's ``i - 1`` is ``-1``, which Python reads as the *last*
shallow unit, and the deep units before the first match are never scored. We score every unit of
``S_i`` against column ``i``, as Eq. 4 states. Both released recurrences (SMA's ``align`` is CLA's with
``max``) backtrack from the free optimum, so neither end is fixed there, while Algorithms 1 and 2 print
``G_1 <- 1``, a line from CLAFusion's pseudocode that Algorithm 1's own recurrence
``T[1, j] = max(T[1, j-1], C[j, 1])`` does not enforce. We follow the text: the segments partition the
deeper stage (``f[m-1] = n-1``) and the first one may hold several units.

**Ties** go to the lexicographically smallest optimal map (the earliest deep units), decided on the
values the DP computes: exactly so whenever those sums are exact (e.g. scores on a dyadic grid). SMA first
breaks its ties by LMA's objective: SMA scores only each segment's last unit, so segmentations that differ
only in where a segment's inner units go tie, and of those we take the one whose inner units also resemble
their shallow unit best (a deep model with an identity layer after unit ``u`` gives exact ties between
putting the identity in ``u``'s segment or in the next one; only the first carries ``u``'s features).

All three are ``O(m n)`` dynamic programmes over ``best[i][j]``, the best total of rows ``i..m-1`` when
``f[i] = j``; LMA becomes one of them because its objective is ``Σ_i (P_i[f[i]] - P_{i+1}[f[i]])`` with
``P_i`` the prefix sums of row ``i`` (``P_m = 0``), a sum of one term per row.

>>> sim = [[0.9, 0.8, 0.1, 0.0],
...        [0.1, 0.2, 0.3, 0.9]]
>>> sma(sim)
DepthSolution(map=(0, 3), objective=1.8)
>>> lma(sim).map
(1, 3)
>>> cla([[0.0, 1.0, 1.0, 1.0], [1.0, 0.5, 0.1, 0.2], [1.0, 1.0, 1.0, 0.0]])
DepthSolution(map=(0, 2, 3), objective=0.1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import accumulate, pairwise
from types import MappingProxyType

import numpy as np
import torch

from hetsurgery.errors import InvalidInput

MatrixLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


class DepthError(InvalidInput, ValueError):
    """A depth alignment asked of impossible input: more shallow units than deep ones, NaN scores,
    a map that is not strictly increasing or breaks its method's fixed ends, a malformed plan."""


class DepthMethod(Enum):
    CLA = "cla"
    SMA = "sma"
    LMA = "lma"

    @property
    def maximises(self) -> bool:
        """SMA and LMA maximise a similarity; CLA minimises a cost."""
        return self is not DepthMethod.CLA


@dataclass(frozen=True)
class DepthSolution:
    map: tuple[int, ...]
    objective: float


def cla(cost: MatrixLike) -> DepthSolution:
    """CLAFusion: minimise ``Σ cost[i, f[i]]``, first↔first and last↔last fixed (only first when ``m = 1``)."""
    c = as_matrix(cost, DepthMethod.CLA)
    return _solve(DepthMethod.CLA, c, [[-v for v in row] for row in c])


def sma(sim: MatrixLike) -> DepthSolution:
    """Segment-wise: maximise ``Σ sim[i, f[i]]`` (each segment's last unit), ``f[m-1] = n-1``; ties broken by
    LMA's objective, then by the earliest map."""
    s = as_matrix(sim, DepthMethod.SMA)
    return _solve(DepthMethod.SMA, s, s, _layer_weights(s))


def lma(sim: MatrixLike) -> DepthSolution:
    """Layer-wise: maximise ``Σ_i Σ_{j ∈ S_i} sim[i, j]`` (every unit of each segment), ``f[m-1] = n-1``."""
    s = as_matrix(sim, DepthMethod.LMA)
    return _solve(DepthMethod.LMA, s, _layer_weights(s))


def _layer_weights(s: list[list[float]]) -> list[list[float]]:
    """LMA's objective as one term per row: ``P_i[f[i]] - P_{i+1}[f[i]]`` with ``P_i`` row ``i``'s prefix sums."""
    prefix = [list(accumulate(row)) for row in s]
    zero = [0.0] * len(s[0])
    return [[a - b for a, b in zip(prefix[i], prefix[i + 1] if i + 1 < len(s) else zero, strict=True)]
            for i in range(len(s))]


SOLVERS: Mapping[DepthMethod, Callable[[MatrixLike], DepthSolution]] = MappingProxyType({
    DepthMethod.CLA: cla,
    DepthMethod.SMA: sma,
    DepthMethod.LMA: lma,
})


def solve(method: DepthMethod, matrix: MatrixLike) -> DepthSolution:
    """The solver of ``method`` (a cost matrix for CLA, a similarity matrix for SMA and LMA)."""
    return SOLVERS[method](matrix)


def fixed_ends(method: DepthMethod, m: int, n: int) -> tuple[int | None, int | None]:
    """``(f[0], f[m-1])`` as the method fixes them (``None``: free)."""
    if method is DepthMethod.CLA:
        return 0, (n - 1 if m > 1 else None)
    return None, n - 1


def segments(f: Sequence[int], n: int) -> tuple[tuple[int, ...], ...]:
    """The deep units each shallow unit stands for: ``(f[i-1], f[i]]`` with ``f[-1] = -1``, the last
    segment running to ``n - 1`` (it ends before only for CLA with ``m = 1``).

    >>> segments((0, 2, 4), 5), segments((0,), 3)
    (((0,), (1, 2), (3, 4)), ((0, 1, 2),))
    """
    ends = [*f[:-1], n - 1]
    starts = [0, *(e + 1 for e in f[:-1])]
    return tuple(tuple(range(s, e + 1)) for s, e in zip(starts, ends, strict=True))


def check_map(method: DepthMethod, f: Sequence[int], m: int, n: int) -> None:
    """Raise ``DepthError`` unless ``f`` is a strictly increasing map ``range(m) -> range(n)`` with the
    method's fixed ends."""
    f = tuple(f)
    if len(f) != m or any(type(j) is not int for j in f):
        raise DepthError(f"a {method.value} map of {m} shallow units needs {m} ints, got {f}")
    if any(not 0 <= j < n for j in f) or any(a >= b for a, b in pairwise(f)):
        raise DepthError(f"map {f} is not strictly increasing into range({n})")
    first, last = fixed_ends(method, m, n)
    if (first is not None and f[0] != first) or (last is not None and f[-1] != last):
        raise DepthError(f"{method.value} fixes f[0] = {first} and f[-1] = {last} (None: free); map {f} does not")


def objective(method: DepthMethod, matrix: MatrixLike, f: Sequence[int]) -> float:
    """The method's objective of map ``f``, summed in row order (the value ``solve`` reports).

    >>> objective(DepthMethod.LMA, [[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]], (1, 2))
    35.0
    """
    s = as_matrix(matrix, method)
    check_map(method, f, len(s), len(s[0]))
    if method is DepthMethod.LMA:
        return sum(s[i][j] for i, seg in enumerate(segments(f, len(s[0]))) for j in seg)
    return sum(s[i][j] for i, j in enumerate(f))


def as_matrix(values: MatrixLike, method: DepthMethod) -> list[list[float]]:
    """The rows of an ``m x n`` score matrix as floats, checked: ``1 <= m <= n``, every entry finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[0] > a.shape[1]:
        raise DepthError(f"{method.value} needs an m x n matrix with 1 <= m <= n (rows: the shallower model's "
                         f"units, columns: the deeper model's), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DepthError(f"{method.value}: the score matrix has NaN or infinite entries")
    return a.tolist()


def _solve(method: DepthMethod, scores: list[list[float]], *weights: list[list[float]]) -> DepthSolution:
    """The best map for the first ``weights``, ties broken by the next ones, then by the earliest map."""
    m, n = len(scores), len(scores[0])
    w = [[tuple(layer[i][j] for layer in weights) for j in range(n)] for i in range(m)]
    f = _best_map(w, *fixed_ends(method, m, n))
    return DepthSolution(f, objective(method, scores, f))


def _best_map(w: list[list[tuple[float, ...]]], first: int | None, last: int | None) -> tuple[int, ...]:
    """The lexicographically smallest strictly increasing map maximising ``Σ_i w[i][f[i]]`` (tuples: compared
    lexicographically, summed entrywise) with the given ends. ``best[j]``: the best total of rows ``i..m-1``
    with ``f[i] = j``; ``nxt[i][j]``: the smallest ``f[i+1]`` reaching it."""
    m, n = len(w), len(w[0])
    none = tuple(-math.inf for _ in w[0][0])
    best = [w[m - 1][j] if last is None or j == last else none for j in range(n)]
    nxt: list[list[int]] = [[] for _ in range(m - 1)]
    for i in range(m - 2, -1, -1):
        row, ptr = [none] * n, [-1] * n
        top, arg = none, -1  # max of best[j'] over j' > j, at its smallest j'
        for j in range(n - 1, -1, -1):
            if arg >= 0:
                row[j], ptr[j] = tuple(a + b for a, b in zip(w[i][j], top, strict=True)), arg
            if best[j] > none and best[j] >= top:
                top, arg = best[j], j
        best, nxt[i] = row, ptr
    start, value = -1, none
    for j in range(n) if first is None else (first,):
        if best[j] > value:
            start, value = j, best[j]
    f = [start]
    for i in range(m - 1):
        f.append(nxt[i][f[-1]])
    return tuple(f)
