"""A depth merge reads the calibration data once (``merging.one_pass``): the statistics it gathers while the unit
similarities are computed, joined after the plan, equal those of a separate pass over the balanced models."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn

import hetsurgery as hs
import hetsurgery.merging.driver as driver
import hetsurgery.merging.one_pass as one_pass
from hetsurgery.ir import Site
from hetsurgery.plan.accumulate import BlockAccumulator
from hetsurgery.plan.candidates import Candidates, View
from hetsurgery.plan.stats import GroupStats


def _data(shape: tuple[int, ...], batches: int = 5, size: int = 24) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(size, *shape, generator=gen) for _ in range(batches)]


def _merged(monkeypatch: pytest.MonkeyPatch, models: list[nn.Module], data: Iterable[torch.Tensor], *, once: bool,
            **options: Any) -> tuple[Any, dict[int, GroupStats]]:
    """The merge and the statistics its width plan read, in one pass (``once``) or two."""
    caught: dict[int, GroupStats] = {}
    real: Callable[..., dict[int, GroupStats]] = driver.collect_stats

    def collect(*args: Any, **kwargs: Any) -> dict[int, GroupStats]:
        out = real(*args, **kwargs)
        caught.update(out)
        return out

    with monkeypatch.context() as m:
        m.setattr(driver, "collect_stats", collect)
        if not once:
            m.setattr(one_pass, "possible", lambda *a, **k: False)
        result = hs.merge(models, data, progress=False, **options)
    return result, caught


def _pairs() -> list[tuple[str, Callable[[], list[nn.Module]], tuple[int, ...], str]]:
    return [("mlp", lambda: [hs.zoo.mlp([16] * 5), hs.zoo.mlp([16, 16])], (64,), "cla"),
            ("resnet lma", lambda: [hs.zoo.resnet((3, 3, 3)), hs.zoo.resnet((2, 1, 2))], (1, 8, 8), "lma"),
            ("resnet sma, the shallow model first", lambda: [hs.zoo.resnet((2, 1, 1)), hs.zoo.resnet((3, 2, 1))],
             (1, 8, 8), "sma")]


@pytest.mark.parametrize("method", ["zip", "permute"])
@pytest.mark.parametrize("case", _pairs(), ids=lambda c: c[0])
def test_one_pass_gives_the_statistics_and_the_merge_of_two(monkeypatch: pytest.MonkeyPatch, case: Any,
                                                           method: str) -> None:
    _, make, shape, depth = case
    torch.manual_seed(0)
    models = make()
    data = _data(shape)  # 60 similarity samples: the pass stops inside the third batch and the statistics go on there
    once, stats_once = _merged(monkeypatch, models, data, once=True, method=method, depth=depth, depth_samples=60)
    twice, stats_twice = _merged(monkeypatch, models, data, once=False, method=method, depth=depth, depth_samples=60)
    assert (once.report.passes, twice.report.passes) == (1, 2)
    assert "calibration data (unit similarities and statistics): 1" in str(once.report)
    assert stats_once.keys() == stats_twice.keys() and stats_once
    for gid, s in stats_twice.items():
        o = stats_once[gid]
        assert o.count == s.count
        scale = float(s.cov.abs().max())
        assert torch.allclose(o.cov, s.cov, rtol=0, atol=1e-6 * scale), gid
        assert torch.allclose(o.mean, s.mean, atol=1e-6 * (1 + float(s.mean.abs().max())))
        assert torch.equal(o.constant, s.constant)
    a, b = once.model.state_dict(), twice.model.state_dict()
    assert all(torch.allclose(a[k].double(), b[k].double(), atol=1e-5) for k in a if a[k].is_floating_point())
    # the unit similarities: SMA and LMA made of the gathered moments of the units' outputs, CLA a CKA of its own
    for md_once, md_twice in zip(once.depth.models, twice.depth.models, strict=True):
        for sa, sb in zip(md_once.stages, md_twice.stages, strict=True):
            assert sa.map == sb.map
            assert torch.allclose(torch.tensor(sa.scores), torch.tensor(sb.scores), rtol=0, atol=1e-6)


@pytest.mark.parametrize("depth, separate", [("lma", False), ("sma", False), ("cla", True)])
def test_sma_and_lma_take_their_unit_similarities_from_the_gathered_moments(monkeypatch: pytest.MonkeyPatch,
                                                                           depth: str, separate: bool) -> None:
    import hetsurgery.merging.similarity as similarity

    fed: list[int] = []
    real = similarity.StreamingCKA.add
    monkeypatch.setattr(similarity.StreamingCKA, "add", lambda self, *a: fed.append(1) or real(self, *a))
    torch.manual_seed(0)
    r = hs.merge([hs.zoo.resnet((3, 2, 1)), hs.zoo.resnet((2, 1, 1))], _data((1, 8, 8)), method="zip", depth=depth,
                 depth_samples=60, progress=False)
    assert r.report.passes == 1 and bool(fed) == separate  # CLA compares pre-activations: a CKA of its own


def test_the_data_is_read_once_in_order_and_not_again(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []

    class Logged:
        def __init__(self, batches: list[torch.Tensor]) -> None:
            self.batches = batches

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i, b in enumerate(self.batches):
                reads.append(i)
                yield b

    torch.manual_seed(0)
    deep, shallow = hs.zoo.mlp([16] * 5), hs.zoo.mlp([16, 16])
    r, stats = _merged(monkeypatch, [deep, shallow], Logged(_data((64,))), once=True, method="zip", depth="lma",
                       depth_samples=30)
    assert r.report.passes == 1
    # the first batch once for the example inputs, then every batch once: the second is cut by the similarity pass,
    # and the statistics go on with its rest (a generator's batches are not lost when the similarity pass stops)
    assert reads == [0, 0, 1, 2, 3, 4]
    assert {s.count for s in stats.values()} == {5 * 24}  # one site per group: every sample, once


@pytest.mark.parametrize("options, why", [
    ({"method": "zip", "depth": "cla", "depth_cost": "width"}, "the similarity reads no data"),
])
def test_a_merge_whose_similarities_read_no_data_reads_it_once(options: dict[str, Any], why: str) -> None:
    torch.manual_seed(0)
    r = hs.merge([hs.zoo.mlp([16] * 4), hs.zoo.mlp([16, 16])], _data((64,)), progress=False, **options)
    assert r.report.passes == 1, why


@pytest.mark.parametrize("options, models", [
    ({"method": "zip", "depth": "cla", "balance": "merge"}, 2),  # fused layers are approximations
    ({"method": "zip", "depth": "cla", "memory_budget": 1 << 30}, 2),  # statistics in chunks
    ({"method": "zip", "depth": "cla"}, 3),  # three models
])
def test_what_one_pass_does_not_cover_takes_two(options: dict[str, Any], models: int) -> None:
    torch.manual_seed(0)
    nets = [hs.zoo.mlp([16] * 4), hs.zoo.mlp([16, 16]), hs.zoo.mlp([16] * 3)][:models]
    r = hs.merge(nets, _data((64,)), progress=False, **options)
    assert r.report.passes == 2


@pytest.mark.parametrize("method", ["zip", "permute"])
def test_normalised_streams_take_two_passes_without_gathering(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A pre-LN transformer: an inserted block's LayerNorm output is no node of the original, so nothing is gathered
    for a pass that could not use it."""
    made: list[object] = []
    real = one_pass.Gather.__init__
    monkeypatch.setattr(one_pass.Gather, "__init__", lambda self, *a, **k: made.append(1) or real(self, *a, **k))
    torch.manual_seed(0)
    deep, shallow = hs.zoo.transformer("manual", depth=3).eval(), hs.zoo.transformer("manual", depth=1).eval()
    r = hs.merge([deep, shallow], _data((1, 8, 8)), method=method, depth="lma", progress=False)
    assert r.report.passes == 2 and not made


class InPlaceBlock(nn.Module):
    """A residual block whose add is read by an in-place ReLU: an inserted copy's branch cannot be skipped, and its
    output cannot be traced back to its input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.bn(self.conv(x)) + x)


class Net(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[InPlaceBlock(8) for _ in range(blocks)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def test_a_site_that_cannot_be_traced_back_takes_two_passes_and_the_same_merge(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    torch.manual_seed(0)
    models = [Net(5).eval(), Net(2).eval()]
    data = _data((1, 8, 8))
    seen: list[object] = []
    real = one_pass.seeded
    monkeypatch.setattr(one_pass, "seeded", lambda *a: seen.append(real(*a)) or seen[-1])
    r, _ = _merged(monkeypatch, models, data, once=True, method="zip", depth="lma", depth_samples=60)
    (stage,) = r.depth.model(1).stages
    assert any(ins.after < 1 for ins in stage.insertions)  # a block inserted before the last: its output is a site
    assert seen == [None] and r.report.passes == 2
    twice, _ = _merged(monkeypatch, models, data, once=False, method="zip", depth="lma", depth_samples=60)
    a, b = r.model.state_dict(), twice.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_candidates_join_sites_as_one_accumulator_would_sum_them() -> None:
    """Two sites of one group, the anchor second: the joined accumulator equals feeding the pairs in turn, and it
    goes on taking batches."""
    gen = torch.Generator().manual_seed(1)
    a1, a2 = View(1, Site("p", 1), 3), View(1, Site("q", 1), 3)
    b1, b2, b3 = View(0, Site("r", 1), 2), View(0, Site("s", 1), 2), View(0, Site("t", 1), 2)
    cands = Candidates([a1, a2, b1, b2, b3], [(a, b) for a in (a1, a2) for b in (b1, b2, b3)], full=True)
    batches = [{n: torch.randn(7, 3 if n in "pq" else 2, 5, generator=gen) + 50.0 for n in "pqrst"} for _ in range(3)]
    for x in batches[:2]:
        cands.add({1: {"p": x["p"], "q": x["q"]}, 0: {"r": x["r"], "s": x["s"], "t": x["t"]}})
    joined = cands.accumulator([(a1, b3), (a2, b1)], anchor_first=False)
    whole = BlockAccumulator([2, 3], full=True)
    for x in batches[:2]:
        whole.add([x["t"], x["p"]])
        whole.add([x["r"], x["q"]])
    for acc in (joined, whole):
        acc.add([batches[2]["s"], batches[2]["p"]])
    assert joined.n == whole.n == 3 * 7 * 5 * 2 - 7 * 5
    assert torch.allclose(joined.covariance(), whole.covariance(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(joined.means(), whole.means(), rtol=1e-7)


def test_one_pass_reads_a_dataloader_of_labelled_batches() -> None:
    """(inputs, labels) batches from a DataLoader: the batch the similarity pass cuts goes on into the statistics
    without its labels, and the merge equals the two-pass one."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    models = [hs.zoo.resnet((3, 2, 1)), hs.zoo.resnet((2, 1, 1))]
    x = torch.cat(_data((1, 8, 8)))
    loader = DataLoader(TensorDataset(x, torch.arange(len(x)) % 10), batch_size=24)
    once = hs.merge(models, loader, method="zip", depth="lma", depth_samples=50, progress=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(one_pass, "possible", lambda *a, **k: False)
        twice = hs.merge(models, loader, method="zip", depth="lma", depth_samples=50, progress=False)
    assert (once.report.passes, twice.report.passes) == (1, 2)
    a, b = once.model.state_dict(), twice.model.state_dict()
    assert all(torch.allclose(a[k].double(), b[k].double(), atol=1e-5) for k in a if a[k].is_floating_point())
