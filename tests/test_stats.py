"""Streaming statistics equal torch.cov of the stored features; dead features correlate 0, not NaN."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.errors import HetsurgeryError
from hetsurgery.plan.joint import features, tap_module
from hetsurgery.plan.signature import joint_signature
from hetsurgery.plan.stats import collect_stats


def _two_graphs() -> tuple[hs.ModelGraph, hs.ModelGraph]:
    torch.manual_seed(0)
    a, b = hs.zoo.resnet((1, 1, 1)), hs.zoo.resnet((1, 1, 1))
    x = torch.randn(2, 1, 8, 8)
    return hs.trace(a.eval(), x), hs.trace(b.eval(), x)


def test_streaming_covariance_equals_torch_cov() -> None:
    ga, gb = _two_graphs()
    batches = [torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n)) for n in (5, 17, 9)]
    stats = collect_stats([ga, gb], batches, progress=False)
    for gid, st in stats.items():
        grp = ga.group(gid)
        nodes = sorted({s.node for s in grp.sites})
        rows = []
        for x in batches:
            cols = []
            for g in (ga, gb):
                outs = dict(zip(nodes, tap_module(g, nodes)(x), strict=True))
                cols.append(torch.cat([features(outs[s.node], s, grp.size) for s in g.group(gid).sites]))
            rows.append(torch.cat(cols, 1))
        stored = torch.cat(rows).double()
        assert st.count == stored.shape[0]
        torch.testing.assert_close(st.mean, stored.mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(st.cov, torch.cov(stored.T), rtol=1e-5, atol=1e-6)


def test_conv_positions_and_every_site_count_as_samples() -> None:
    ga, gb = _two_graphs()
    stats = collect_stats([ga, gb], [torch.randn(4, 1, 8, 8)], progress=False)
    inner = next(g for g in ga.groups if g.label == "layer1_0_conv1")
    assert stats[inner.id].count == 4 * 8 * 8  # one site (conv2's input), 64 positions per image
    stream = ga.group(0)
    assert len(stream.sites) >= 2 and stats[0].count > 4 * 64


def test_memory_budget_gives_the_same_statistics_in_several_passes() -> None:
    ga, gb = _two_graphs()
    data = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))]
    whole = collect_stats([ga, gb], data, progress=False)
    calls = []

    class Counting(list):
        def __iter__(self):
            calls.append(1)
            return super().__iter__()

    biggest = max(16 * (2 * g.size) ** 2 for g in ga.permutable())
    split = collect_stats([ga, gb], Counting(data), memory_budget=biggest, progress=False)
    assert len(calls) > 1
    assert whole.keys() == split.keys()
    for gid in whole:
        torch.testing.assert_close(whole[gid].cov, split[gid].cov)


def test_dead_features_correlate_zero() -> None:
    class Dead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            with torch.no_grad():
                self.a.weight[0] = 0.0
                self.a.bias[0] = -1.0  # unit 0 is always 0 after the ReLU

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    m = Dead()
    g = hs.trace(m, torch.randn(2, 3))
    st = collect_stats([g, g], [torch.randn(50, 3)], progress=False)[0]
    corr = st.corr()
    assert not torch.isnan(corr).any()
    assert corr[0].abs().sum() == 0 and corr[:, 4].abs().sum() == 0
    # two constant features of equal value look alike; their own parameters break the tie
    assert 0.999 < st.similarity()[0, 4] < 1.0
    assert st.similarity(joint_signature([g, g], 0))[0, 4] == 1.0


def test_cross_only_statistics_match_the_full_ones_where_they_are_kept() -> None:
    ga, gb = _two_graphs()
    data = [torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))]
    full = collect_stats([ga, gb], data, progress=False)
    cross = collect_stats([ga, gb], data, full=False, progress=False)
    for gid, f in full.items():
        c = cross[gid]
        assert not c.complete and f.complete
        torch.testing.assert_close(c.block(c.cov, 0, 1), f.block(f.cov, 0, 1))
        torch.testing.assert_close(c.cov.diagonal(), f.cov.diagonal(), rtol=1e-5, atol=1e-7)
        d = f.widths[0]
        assert torch.count_nonzero(c.cov[:d, :d] - torch.diag(c.cov.diagonal()[:d])) == 0


def test_features_with_a_large_mean_keep_their_correlation() -> None:
    """Products of centred values: a bias of 1000 before the ReLU must not wash the covariance out."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        m[0].bias.fill_(1000.0)  # every unit is active: the features are 1000 + a small linear signal
    g = hs.trace(m, torch.randn(2, 4))
    batches = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    st = collect_stats([g, g], batches, progress=False)[0]
    with torch.no_grad():
        stored = torch.cat([torch.relu(m[0](x)) for x in batches]).double()
    ref = torch.corrcoef(torch.cat([stored, stored], 1).T)
    torch.testing.assert_close(st.corr(), ref, rtol=0, atol=1e-4)


def test_statistics_need_no_batch_sized_product_buffers() -> None:
    """One GEMM per block: the transient memory is a copy of the activation, not batch x d x d."""
    from hetsurgery.plan.accumulate import BlockAccumulator

    x = torch.randn(256, 64, 4)  # 256 images, 64 channels, 4 positions: 256 KiB
    acc = BlockAccumulator([64, 64], full=True)
    acc.add([x, x])  # the first batch also fixes the shift
    peak = _peak_bytes(lambda: acc.add([x, x]))
    assert peak < 8 * x.numel() * 4, peak  # batch x d x d would be 256 * 64 * 64 * 4 bytes = 4 MiB


def _peak_bytes(fn: Callable[[], None]) -> int:
    """Peak bytes the CPU allocator holds above its start while ``fn`` runs (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    held = peak = 0
    for e in events:
        held += e.cpu_memory_usage
        peak = max(peak, held)
    return peak


def test_accumulators_sharing_scratch_buffers_equal_separate_ones() -> None:
    """Sites fed in turn through one set of reused buffers: nothing leaks from one group into another."""
    from hetsurgery.plan.accumulate import BlockAccumulator, Scratch

    gen = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(4, d, 9, generator=gen) * 3 + 1) for d in (5, 3, 6, 2)] for _ in range(3)]
    scratch = Scratch()
    shared = [BlockAccumulator([5, 3], True, scratch), BlockAccumulator([6, 2], True, scratch)]
    alone = [BlockAccumulator([5, 3], True), BlockAccumulator([6, 2], True)]
    for b in batches:
        for accs in (shared, alone):
            accs[0].add(b[:2])
            accs[1].add(b[2:])
    for s, a in zip(shared, alone, strict=True):
        assert torch.equal(s.covariance(), a.covariance()) and torch.equal(s.means(), a.means())
    feats = torch.cat([b[2].transpose(1, 2).reshape(-1, 6) for b in batches])
    torch.testing.assert_close(shared[1].covariance()[:6, :6], torch.cov(feats.T.double()), rtol=1e-5, atol=1e-6)
    assert len(scratch.buffers) == 3  # one per model and one for the products, grown to the largest site


def test_a_similarity_block_is_that_block_of_the_similarity() -> None:
    """``similarity_block`` (what permute reads: one block, no ``D x D`` matrix) equals the block of ``similarity``,
    with dead features (constant, some at one value) and a signature breaking ties."""
    from hetsurgery.plan.stats import GroupStats

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 11, generator=gen, dtype=torch.float64)
    x[:, [2, 8]] = 0.0  # dead in both models, at the same value
    x[:, 4] = 3.0
    stats = GroupStats((5, 6), 200, x.mean(0), torch.cov(x.T))
    signature = torch.randn(11, 3, generator=gen)
    signature[8] = signature[2]
    for sig in (None, signature):
        full = stats.similarity(sig)
        for i, j in ((0, 1), (1, 0), (1, 1)):
            assert torch.equal(stats.similarity_block(i, j, sig), stats.block(full, i, j))


def test_single_use_statistics_make_the_similarity_over_their_covariance_block() -> None:
    """Single-use statistics (a streamed pass hands each group over to be solved once) write a similarity block over
    the covariance block it comes from: the same values as otherwise, the block's memory, the same tensor when asked
    again with the same signature, and a clear error for anything that would read the covariance afterwards."""
    from hetsurgery.plan.stats import GroupStats

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 9, generator=gen, dtype=torch.float64)
    x[:, [1, 6]] = 2.0  # dead in both models, at the same value
    cov = torch.cov(x.T)
    signature = torch.randn(9, 2, generator=gen)

    def parts() -> dict:
        return dict(widths=(4, 5), count=300, mean=x.mean(0), matrix=None, complete=False,
                    blocks={(0, 1): cov[:4, 4:].clone()}, variance=cov.diagonal().clone())

    kept = GroupStats(**parts())
    once = GroupStats(**parts(), single_use=True)
    block = once.blocks[(0, 1)]
    made = once.similarity_block(0, 1, signature)
    assert torch.equal(made, kept.similarity_block(0, 1, signature))
    assert made.data_ptr() == block.data_ptr()  # over the covariance block, no second matrix
    assert once.similarity_block(0, 1, signature.clone()) is made
    for read in (lambda: once.cross(0, 1), lambda: once.cross(1, 0), lambda: once.cov,
                 lambda: once.similarity_block(0, 1, None)):
        with pytest.raises(HetsurgeryError, match="single-use"):
            read()
    assert torch.equal(kept.similarity_block(0, 1, signature), kept.similarity_block(0, 1, signature))


def test_products_made_and_widened_in_blocks_of_rows_give_the_same_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Products added into the float64 sums a few rows at a time (``WIDEN`` elements) sum exactly what the whole product does,
    and products of a few rows (``PRODUCT``) what one product of every row does, to float32 rounding (a product of
    fewer rows may take another kernel)."""
    import hetsurgery.plan.accumulate as accumulate

    gen = torch.Generator().manual_seed(3)
    batches = [[torch.randn(2, d, 5, generator=gen) + 2 for d in (7, 9)] for _ in range(3)]

    def run(product: int, widen: int) -> torch.Tensor:
        monkeypatch.setattr(accumulate, "PRODUCT", product)
        monkeypatch.setattr(accumulate, "WIDEN", widen)
        acc = accumulate.BlockAccumulator([7, 9], True)
        for b in batches:
            acc.add(b)
        return acc.covariance()

    whole = run(1 << 20, 1 << 20)
    for widen in (1, 18, 45):  # 1, 2 and 5 rows of 9 columns
        assert torch.equal(run(1 << 20, widen), whole)
    for product, widen in ((20, 18), (9, 1 << 10), (1, 1)):  # products of 2, 1 and 1 rows
        torch.testing.assert_close(run(product, widen), whole, rtol=1e-5, atol=1e-6)


def test_a_tapped_value_that_a_later_op_writes_into_is_returned_as_it_was_made() -> None:
    """The zoo's VGG runs ``ReLU(inplace=True)`` after its BatchNorms and its hidden Linear: a tap of those
    pre-activations (CLA's unit features, the signs a fused segment estimates) must not see the ReLU's output."""
    torch.manual_seed(0)
    model = hs.zoo.vgg().eval()
    x = torch.randn(4, 1, 8, 8)
    g = hs.trace(model, x)
    pres = [u.pre for u in g.units if u.pre != u.exit]
    assert pres
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[str(n.target)].register_forward_hook(
        lambda m, i, o, name=n.name: seen.__setitem__(name, o.clone()))
        for n in g.module.graph.nodes if n.name in pres]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    tapped = dict(zip(pres, tap_module(g, pres)(x), strict=True))
    for name in pres:
        assert bool((seen[name] < 0).any())  # a pre-activation: some values negative
        assert torch.equal(tapped[name], seen[name]), name
