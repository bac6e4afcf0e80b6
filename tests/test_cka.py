"""Streamed linear CKA equals the direct one (and the Gram-matrix form); its invariances; no NaN on constants."""

from __future__ import annotations

import pytest
import torch

from hetsurgery.plan.depth import CKAError, StreamingCKA, linear_cka, width_cost


def _gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s sample-space form: HSIC of centred linear Gram matrices (an independent oracle)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / (torch.linalg.norm(kx) * torch.linalg.norm(ky)))


def _units(samples: int, widths: list[int], seed: int, mean: float) -> list[torch.Tensor]:
    """Features sharing a latent factor (non-trivial CKA), each with its own large per-feature mean."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, 3, generator=g, dtype=torch.float64)
    return [z @ torch.randn(3, w, generator=g, dtype=torch.float64)
            + 0.5 * torch.randn(samples, w, generator=g, dtype=torch.float64)
            + mean * (1 + torch.rand(w, generator=g, dtype=torch.float64))
            for w in widths]


def _streamed(xs: list[torch.Tensor], ys: list[torch.Tensor], cuts: list[int]) -> torch.Tensor:
    acc = StreamingCKA({"s": ([f"a{i}" for i in range(len(xs))], [f"b{j}" for j in range(len(ys))])})
    for lo, hi in zip([0, *cuts], [*cuts, xs[0].shape[0]], strict=True):
        acc.add({f"a{i}": x[lo:hi] for i, x in enumerate(xs)}, {f"b{j}": y[lo:hi] for j, y in enumerate(ys)})
    return acc.matrix("s")


def _direct(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[linear_cka(x, y) for y in ys] for x in xs], dtype=torch.float64)


def test_linear_cka_equals_the_gram_matrix_form() -> None:
    x, y, w = _units(40, [3, 7, 5], seed=1, mean=2.0)
    for a, b in ((x, y), (y, w), (x, w)):
        assert linear_cka(a, b) == pytest.approx(_gram_cka(a, b), abs=1e-12)


def test_streamed_equals_direct_in_float64_with_a_large_mean() -> None:
    feats = _units(301, [4, 6, 3, 5, 2, 7, 9], seed=0, mean=1e4)
    xs, ys = feats[:3], feats[3:]  # p != q, three units of A against four of B
    direct = _direct(xs, ys)
    assert float(direct.min()) > 0.05 and float(direct.max()) < 0.999  # a non-trivial matrix
    torch.testing.assert_close(_streamed(xs, ys, [17, 120, 121, 250]), direct, rtol=0, atol=1e-10)


def test_streamed_float32_features_match_to_1e5() -> None:
    feats = [f.float() for f in _units(500, [8, 5, 6], seed=2, mean=1e4)]
    xs, ys = feats[:1], feats[1:]
    direct = _direct([x.double() for x in xs], [y.double() for y in ys])  # the same float32 values
    torch.testing.assert_close(_streamed(xs, ys, [64, 128, 300]), direct, rtol=0, atol=1e-5)


def test_result_does_not_depend_on_how_the_data_is_batched() -> None:
    feats = _units(200, [5, 4, 6], seed=3, mean=50.0)
    whole = _streamed(feats[:1], feats[1:], [])
    for cuts in ([1, 2, 3], [100], [33, 66, 99, 132, 165, 198]):
        torch.testing.assert_close(_streamed(feats[:1], feats[1:], cuts), whole, rtol=0, atol=1e-12)


def test_channel_major_views_count_every_position_as_a_sample() -> None:
    g = torch.Generator().manual_seed(4)
    conv = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64) + 7.0  # N, C, H, W
    flat = conv.permute(0, 2, 3, 1).reshape(-1, 3)  # 120 samples of 3 channels
    other = flat @ torch.randn(3, 4, generator=g, dtype=torch.float64) + torch.randn(120, 4, generator=g,
                                                                                   dtype=torch.float64)
    acc = StreamingCKA({"s": (["conv"], ["lin"])})
    acc.add({"conv": conv[:2].flatten(2)}, {"lin": other[:40]})  # (A, C, M) view and its flattened rows
    acc.add({"conv": conv[2:].flatten(2)}, {"lin": other[40:]})
    assert float(acc.matrix("s")[0, 0]) == pytest.approx(linear_cka(flat, other), abs=1e-12)


def test_self_similarity_orthogonal_and_scaling_invariance_and_symmetry() -> None:
    x, y = _units(80, [6, 4], seed=5, mean=3.0)
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64))[0]
    acc = StreamingCKA({"s": (["x"], ["x", "xq", "x3", "y"]), "t": (["y"], ["x"])})
    for rows in (slice(0, 30), slice(30, 80)):
        acc.add({"x": x[rows], "y": y[rows]},
                {"x": x[rows], "xq": x[rows] @ q, "x3": -3.5 * x[rows] + 1.0, "y": y[rows]})
    s = acc.matrix("s")[0]
    assert s[:3].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert float(s[3]) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert float(acc.matrix("t")[0, 0]) == pytest.approx(float(s[3]), abs=1e-12)  # symmetric
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-15)
    assert linear_cka(x @ q, 2.0 * y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x, x @ torch.randn(6, 6, dtype=torch.float64)) < 1.0 - 1e-3  # not invariant to any map


def test_constant_features_give_zero_not_nan() -> None:
    x, y = _units(60, [5, 3], seed=7, mean=1e3)
    dead = torch.full((60, 4), 3.7, dtype=torch.float64)  # a unit whose channels never move
    half_dead = torch.cat([y, dead[:, :2]], 1)  # constant channels next to live ones change nothing
    acc = StreamingCKA({"s": (["x", "dead"], ["y", "half", "dead"])})
    for rows in (slice(0, 25), slice(25, 60)):
        acc.add({"x": x[rows], "dead": dead[rows]},
                {"y": y[rows], "half": half_dead[rows], "dead": dead[rows]})
    m = acc.matrix("s")
    assert bool(torch.isfinite(m).all())
    assert m[1].tolist() == [0.0, 0.0, 0.0] and m[:, 2].tolist() == [0.0, 0.0]
    assert float(m[0, 1]) == pytest.approx(float(m[0, 0]), abs=1e-12)
    assert linear_cka(x, dead) == 0.0 and linear_cka(dead, dead) == 0.0
    assert linear_cka(x, half_dead) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_stage_pairs_are_blocks_of_the_full_matrix() -> None:
    feats = _units(90, [3, 4, 5, 6, 2, 3, 4], seed=8, mean=10.0)
    a, b = feats[:3], feats[3:]
    acc = StreamingCKA({"layer1": (["a0", "a1"], ["b0", "b1", "b2"]), "layer2": (["a2"], ["b2", "b3"])})
    acc.add({f"a{i}": x for i, x in enumerate(a)} | {"extra": a[0]}, {f"b{j}": y for j, y in enumerate(b)})
    full = _direct(a, b)
    out = acc.matrices()
    assert set(out) == {"layer1", "layer2"}
    torch.testing.assert_close(out["layer1"], full[:2, :3], rtol=0, atol=1e-12)
    torch.testing.assert_close(out["layer2"], full[2:, 2:], rtol=0, atol=1e-12)


def test_bad_input_is_refused_with_the_unit_named() -> None:
    acc = StreamingCKA({"s": (["a"], ["b"])})
    with pytest.raises(CKAError, match="no features for unit 'b'"):
        acc.add({"a": torch.randn(4, 2)}, {})
    with pytest.raises(CKAError, match="unit 'b' gives 5 samples"):
        acc.add({"a": torch.randn(4, 2)}, {"b": torch.randn(5, 2)})
    with pytest.raises(CKAError, match="features must be"):
        acc.add({"a": torch.randn(4)}, {"b": torch.randn(4, 3)})
    acc.add({"a": torch.randn(1, 2)}, {"b": torch.randn(1, 3)})  # the refused batches left nothing
    with pytest.raises(CKAError, match="at least two"):
        acc.matrix("s")
    with pytest.raises(CKAError, match="had 3 channels, now 4"):
        acc.add({"a": torch.randn(2, 2)}, {"b": torch.randn(2, 4)})
    acc.add({"a": torch.tensor([[0.0, float("nan")]])}, {"b": torch.randn(1, 3)})
    with pytest.raises(CKAError, match="not finite"):
        acc.matrix("s")
    with pytest.raises(CKAError, match="no stage pair 'x'"):
        acc.matrix("x")
    with pytest.raises(CKAError, match="twice"):
        StreamingCKA({"s": (["a", "a"], ["b"])})
    with pytest.raises(CKAError, match="same samples"):
        linear_cka(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(CKAError, match="at least two"):
        linear_cka(torch.randn(0, 2), torch.randn(0, 2))


def test_width_cost_is_the_squared_width_difference() -> None:
    cost = width_cost([400, 200, 100], [400, 200, 100, 50, 25])
    assert cost.shape == (3, 5)
    assert cost[1].tolist() == [200.0**2, 0.0, 100.0**2, 150.0**2, 175.0**2]


def test_a_refused_batch_leaves_the_sums_untouched() -> None:
    a, b, c, d = _units(30, [2, 3, 4, 2], seed=9, mean=5.0)
    pairs = {"p": (["a"], ["b"]), "q": (["c"], ["d"])}
    clean, dirty = StreamingCKA(pairs), StreamingCKA(pairs)
    with pytest.raises(CKAError, match="unit 'd' gives 9 samples"):  # pair p is fine, pair q is not
        dirty.add({"a": a[:10], "c": c[:10]}, {"b": b[:10], "d": d[:9]})
    for acc in (clean, dirty):
        acc.add({"a": a[10:], "c": c[10:]}, {"b": b[10:], "d": d[10:]})
    assert all(torch.equal(clean.matrix(k), dirty.matrix(k)) for k in pairs)
