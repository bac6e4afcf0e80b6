"""Linear CKA between the units of two models, streamed over calibration batches.

**What is a sample.** Each unit gives a feature matrix per batch. Every position of its output is a
sample and every channel a feature: a conv output ``(N, C, H, W)`` gives ``N*H*W`` samples of ``C``
features, a sequence ``(N, T, C)`` gives ``N*T`` samples (one per token) of ``C`` features. The caller
passes ``(samples, channels)`` matrices, or ``(A, C, M)`` views like ``plan.joint.site_view`` makes
(every leading ``a`` and trailing ``m`` position is a sample), which saves a copy. Two units compared
with each other must see the same samples in the same order (same batches, same resolution): units
at different resolutions belong to different stages and are never paired.

**Why.** Linear CKA in its feature-space form, on centred features,
``‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``, needs only ``Σx``, ``Σy``, ``XᵀX``, ``YᵀY`` and ``XᵀY``:

- it streams *exactly*, in ``O(C²)`` memory per pair whatever the resolution or the number of samples
  (flattening a whole image into one ``C*H*W`` feature vector, as CLAFusion's code does, would need
  ``(C*H*W)²`` sums, or an ``N x N`` Gram matrix per batch as Xu et al.'s code computes);
- it is invariant to orthogonal transforms of either side's channels, channel permutations among them,
  which is the symmetry we align: units are compared before their channels are matched;
- it does not depend on how the data is cut into batches. Xu et al.'s released code averages a
  minibatch estimate (unbiased HSIC of each batch's Gram matrices), whose value changes with the
  batch size; here the sums run over all samples and the result is the CKA of the whole data.

**Numerics.** Each unit's features are shifted by a per-feature reference, the first batch's median (an
actual sample value, within one standard deviation of the mean), before any product: float32 products
then act on values of the size of the spread, not of the mean (a large bias before a ReLU keeps its
covariance), and a constant feature becomes exactly zero, so it adds nothing anywhere. Products may run
in float32 on the features' device; every sum accumulates in float64 on the CPU and is centred exactly
at the end. A unit without variance has CKA 0 with everything, never NaN.

>>> import torch
>>> x = torch.randn(64, 5, dtype=torch.float64) + 100.0
>>> y = x @ torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]  # x rotated
>>> acc = StreamingCKA({"layer1": (["a0"], ["b0", "b1"])})
>>> for rows in (slice(0, 20), slice(20, 64)):
...     acc.add({"a0": x[rows]}, {"b0": y[rows], "b1": x[rows, :2]})
>>> cka = acc.matrix("layer1")
>>> round(float(cka[0, 0]), 6), abs(float(cka[0, 1]) - linear_cka(x, x[:, :2])) < 1e-9
(1.0, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch

from hetsurgery.errors import InvalidInput
from hetsurgery.plan.accumulate import Scratch, centred


class CKAError(InvalidInput, ValueError):
    """Features that cannot be compared: a missing unit, mismatched samples, too few samples, NaN."""


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two ``(samples, features)`` matrices, directly in float64; 0 when a side is constant.

    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> round(linear_cka(x, 3.0 * x), 12), linear_cka(x, torch.ones(50, 2))
    (1.0, 0.0)
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise CKAError(f"linear_cka needs two (samples, features) matrices with the same samples, at least "
                       f"two, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc, yc = _centre(x.double()), _centre(y.double())
    return _ratio((xc.T @ yc).square().sum(), torch.linalg.norm(xc.T @ xc), torch.linalg.norm(yc.T @ yc))


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Centred columns; a column that is exactly constant becomes exactly zero (no rounding dust)."""
    constant = x.amax(0) == x.amin(0)
    return (x - x.mean(0)).masked_fill(constant, 0.0)


def _ratio(cross: torch.Tensor, norm_x: torch.Tensor, norm_y: torch.Tensor) -> float:
    denom = float(norm_x) * float(norm_y)
    return float(cross) / denom if denom > 0 else 0.0


class _Moments:
    """One unit's running sums over shifted features: count, ``Σx̃`` and ``Σx̃x̃ᵀ`` (float64, CPU)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def centred_gram(self) -> torch.Tensor:
        assert self.total is not None and self.gram is not None
        return self.gram - torch.outer(self.total, self.total) / self.count


class StreamingCKA:
    """Linear CKA matrices between unit lists of two models, one matrix per registered stage pair.

    ``pairs`` maps a stage-pair key to ``(units_a, units_b)``: the unit keys of model A (rows) and of
    model B (columns). Only the pairs inside a stage pair are accumulated. A unit may appear in several
    stage pairs; its own sums are kept once. Feed every batch with ``add``; read with ``matrix``.
    """

    def __init__(self, pairs: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> None:
        checked: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for key, (units_a, units_b) in pairs.items():
            ua, ub = tuple(units_a), tuple(units_b)
            if not ua or not ub:
                raise CKAError(f"stage pair {key!r}: both unit lists must be non-empty, got {ua} and {ub}")
            for side, units in (("A", ua), ("B", ub)):
                if len(set(units)) != len(units):
                    raise CKAError(f"stage pair {key!r}: model {side} lists a unit twice: {units}")
            checked[str(key)] = (ua, ub)
        self.pairs = MappingProxyType(checked)
        self._a = {u: _Moments() for ua, _ in checked.values() for u in ua}
        self._b = {u: _Moments() for _, ub in checked.values() for u in ub}
        self._cross: dict[tuple[str, str], torch.Tensor] = {}
        self._scratch = Scratch()

    def add(self, feats_a: Mapping[str, torch.Tensor], feats_b: Mapping[str, torch.Tensor]) -> None:
        """One batch: each registered unit's features, ``(samples, C)`` or an ``(A, C, M)`` view (never
        modified). Units that are not registered are ignored."""
        views_a = {u: _samples_view(_get(feats_a, u, "A"), u) for u in self._a}
        views_b = {u: _samples_view(_get(feats_b, u, "B"), u) for u in self._b}
        self._check(views_a, views_b)  # before any sum changes: a refused batch leaves no trace
        done_a: set[str] = set()
        done_b: set[str] = set()
        done_cross: set[tuple[str, str]] = set()  # a unit may sit in several stage pairs: fold it once
        for units_a, units_b in self.pairs.values():
            if _samples(views_a[units_a[0]]) == 0:
                continue
            # model B's centred copies stay alive for the stage pair; model A's go one at a time
            ys = {u: self._shifted(self._b[u], views_b[u], slot) for slot, u in enumerate(units_b, start=1)}
            for u in units_b:
                if u not in done_b:
                    _fold_self(self._b[u], ys[u])
                    done_b.add(u)
            for u in units_a:
                x = self._shifted(self._a[u], views_a[u], 0)
                if u not in done_a:
                    _fold_self(self._a[u], x)
                    done_a.add(u)
                for w, y in ys.items():
                    if (u, w) not in done_cross:
                        self._fold_cross(u, w, x, y)
                        done_cross.add((u, w))

    def _check(self, views_a: Mapping[str, torch.Tensor], views_b: Mapping[str, torch.Tensor]) -> None:
        for side, views, moments in (("A", views_a, self._a), ("B", views_b, self._b)):
            for u, v in views.items():
                shift = moments[u].shift
                if shift is not None and v.shape[1] != shift.numel():
                    raise CKAError(f"unit {u!r} of model {side} had {shift.numel()} channels, "
                                   f"now {v.shape[1]}")
        for key, (units_a, units_b) in self.pairs.items():
            count = _samples(views_a[units_a[0]])
            for u, v in [*((u, views_a[u]) for u in units_a), *((u, views_b[u]) for u in units_b)]:
                if _samples(v) != count:
                    raise CKAError(f"stage pair {key!r}: unit {u!r} gives {_samples(v)} samples in this batch, "
                                   f"unit {units_a[0]!r} gives {count}; paired units need the same samples "
                                   f"(same batch, same resolution)")

    def _shifted(self, mom: _Moments, view: torch.Tensor, slot: int) -> torch.Tensor:
        """``(C, samples)`` copy of the features minus the unit's reference (into a reused buffer)."""
        dtype = torch.float64 if view.dtype == torch.float64 else torch.float32
        if mom.shift is None:
            d = view.shape[1]
            mom.shift = view.permute(1, 0, 2).reshape(d, -1).median(dim=1).values.to(dtype)
        return centred(view, mom.shift, self._scratch.get(slot, view.numel(), dtype, view.device))

    def _fold_cross(self, u: str, w: str, x: torch.Tensor, y: torch.Tensor) -> None:
        prod = (x @ y.T).double().cpu()
        acc = self._cross.get((u, w))
        self._cross[(u, w)] = prod if acc is None else acc.add_(prod)

    def matrix(self, key: str) -> torch.Tensor:
        """The ``m x n`` float64 CKA matrix of stage pair ``key`` (rows: model A's units, columns: B's)."""
        if key not in self.pairs:
            raise CKAError(f"no stage pair {key!r}; registered: {sorted(self.pairs)}")
        units_a, units_b = self.pairs[key]
        for side, units, moments in (("A", units_a, self._a), ("B", units_b, self._b)):
            for u in units:
                if moments[u].count < 2:
                    raise CKAError(f"stage pair {key!r}: unit {u!r} of model {side} has {moments[u].count} "
                                   f"calibration samples; CKA needs at least two: give more data")
        out = torch.zeros(len(units_a), len(units_b), dtype=torch.float64)
        norms_b = [torch.linalg.norm(self._checked(self._b[w].centred_gram(), key, w)) for w in units_b]
        for i, u in enumerate(units_a):
            ma = self._a[u]
            norm_a = torch.linalg.norm(self._checked(ma.centred_gram(), key, u))
            for j, w in enumerate(units_b):
                mb = self._b[w]
                assert ma.total is not None and mb.total is not None
                cross = self._cross[(u, w)] - torch.outer(ma.total, mb.total) / ma.count
                out[i, j] = _ratio(self._checked(cross, key, f"{u}, {w}").square().sum(), norm_a, norms_b[j])
        return out

    def matrices(self) -> dict[str, torch.Tensor]:
        """Every registered stage pair's CKA matrix."""
        return {key: self.matrix(key) for key in self.pairs}

    @staticmethod
    def _checked(t: torch.Tensor, key: str, what: str) -> torch.Tensor:
        if not bool(torch.isfinite(t).all()):
            raise CKAError(f"stage pair {key!r}: the features of {what} are not finite (NaN or Inf)")
        return t


def _get(feats: Mapping[str, torch.Tensor], unit: str, side: str) -> torch.Tensor:
    if unit not in feats:
        raise CKAError(f"this batch has no features for unit {unit!r} of model {side}")
    return feats[unit]


def _samples_view(t: torch.Tensor, unit: str) -> torch.Tensor:
    """``(A, C, M)``: a ``(samples, C)`` matrix becomes ``(samples, C, 1)``."""
    if t.ndim == 2:
        return t.unsqueeze(2)
    if t.ndim == 3:
        return t
    raise CKAError(f"unit {unit!r}: features must be (samples, channels) or (A, channels, M), "
                   f"got shape {tuple(t.shape)}")


def _samples(view: torch.Tensor) -> int:
    return view.shape[0] * view.shape[2]


def _fold_self(mom: _Moments, x: torch.Tensor) -> None:
    total = x.sum(1, dtype=torch.float64).cpu()
    gram = (x @ x.T).double().cpu()
    mom.count += x.shape[1]
    mom.total = total if mom.total is None else mom.total.add_(total)
    mom.gram = gram if mom.gram is None else mom.gram.add_(gram)


def width_cost(shallow: Sequence[int], deep: Sequence[int]) -> torch.Tensor:
    """CLAFusion's data-free cost: the squared difference of the units' widths (their "number of
    neurons" representation with the squared-difference cost, Fig. 2 and Table 9), ``m x n`` float64.

    >>> width_cost([3, 2, 1], [5, 4, 3, 1])
    tensor([[ 4.,  1.,  0.,  4.],
            [ 9.,  4.,  1.,  1.],
            [16.,  9.,  4.,  0.]], dtype=torch.float64)
    """
    a = torch.tensor([float(w) for w in shallow], dtype=torch.float64)
    b = torch.tensor([float(w) for w in deep], dtype=torch.float64)
    return (a[:, None] - b[None, :]).square()
