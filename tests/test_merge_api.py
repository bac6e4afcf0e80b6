"""merge(): errors name the problem; the plan serialises; the report times every stage; BN is reset."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import ResetBatchNorm
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.width_plan import WidthPlan

DATA = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def pair(factory=lambda: hs.zoo.resnet((1, 1, 1))) -> list[nn.Module]:
    torch.manual_seed(0)
    return [factory().eval(), factory().eval()]


@pytest.mark.parametrize("method", ["zip", "permute", "weight", "ot", "average", "mal"])
def test_report_times_every_stage_and_plan_round_trips(method: str) -> None:
    r = hs.merge(pair(), DATA, method=method, progress=False)
    assert set(r.report.seconds) == {"trace", "similarity", "depth_plan", "balance", "statistics", "matching",
                                     "combine", "repair", "bn_reset"}
    assert r.report.seconds["similarity"] == 0.0 and "similarity" not in str(r.report)  # no depth alignment
    assert all(v >= 0 for v in r.report.seconds.values())
    assert r.report.seconds["statistics"] > 0 or method in ("weight", "average", "mal")
    assert f"merge method={method}" in str(r.report)
    text = r.plan.to_json()
    back = WidthPlan.from_json(text)
    assert back.widths() == r.plan.widths() and back.method == method and back.to_json() == text
    for gid, m in r.plan.groups.items():
        for a, b in zip(m.merge + m.unmerge, back.groups[gid].merge + back.groups[gid].unmerge, strict=True):
            torch.testing.assert_close(a, b)


def test_match_kinds_are_written_as_their_values_and_read_back_as_members() -> None:
    import json

    from hetsurgery.plan.width_plan import GroupMatch, MatchKind

    plan = WidthPlan("permute", (0.5, 0.5), 0, {0: GroupMatch.identity(0, (3, 3), (0.5, 0.5)),
                                                  1: GroupMatch.from_perms(1, [torch.arange(2)] * 2, (0.5, 0.5))})
    text = plan.to_json()
    assert [g["kind"] for g in json.loads(text)["groups"]] == ["identity", "permutation"]
    assert [m.kind for m in WidthPlan.from_json(text).groups.values()] == [MatchKind.IDENTITY, MatchKind.PERMUTATION]
    assert all(type(m.kind) is MatchKind and "kind" not in m.info for m in WidthPlan.from_json(text).groups.values())
    old = json.loads(text)  # a plan from elsewhere: a kind this version does not know stays as written
    old["groups"][1]["kind"] = "cheese"
    assert WidthPlan.from_json(json.dumps(old)).groups[1].kind == "cheese"
    older = json.loads(text)  # plans written before the kind was a field kept it in info
    for g in older["groups"]:
        g["info"]["kind"] = g.pop("kind")
    assert [m.kind for m in WidthPlan.from_json(json.dumps(older)).groups.values()] == [MatchKind.IDENTITY,
                                                                                        MatchKind.PERMUTATION]


def test_the_method_table_is_read_only() -> None:
    from hetsurgery.merging import METHODS

    with pytest.raises(TypeError):
        METHODS["mine"] = METHODS["zip"]  # type: ignore[index]


@pytest.mark.parametrize("method", ["average", "weight"])
def test_data_free_methods_run_without_data(method: str) -> None:
    r = hs.merge(pair(), None, method=method, example_inputs=DATA[0][:2], progress=False)
    assert r.report.seconds["statistics"] < 0.01 and r.model(DATA[0]).shape == (32, 10)


def test_errors_name_the_problem() -> None:
    with pytest.raises(hs.MergeError, match="unknown merge method 'zipp'"):
        hs.merge(pair(), DATA, method="zipp")
    with pytest.raises(hs.MergeError, match=r"takes no option 'gamma' \(its options: alpha, beta\)"):
        hs.merge(pair(), DATA, method="zip", gamma=1, progress=False)
    with pytest.raises(hs.MergeError, match="option alpha takes a float"):
        hs.merge(pair(), DATA, method="zip", alpha=None, progress=False)
    with pytest.raises(hs.MergeError, match=r"option alpha must be in \[0, 1\], not 2"):
        hs.merge(pair(), DATA, method="zip", alpha=2, progress=False)
    with pytest.raises(hs.MergeError, match="option solver must be 'emd' or 'sinkhorn', not 'nope'"):
        hs.merge(pair(), DATA, method="ot", solver="nope", progress=False)
    with pytest.raises(hs.MergeError, match="option cost must be 'activations' or 'weights', not 'labels'"):
        hs.merge(pair(), DATA, method="ot", cost="labels", progress=False)
    with pytest.raises(hs.MergeError, match=r"option solver takes a str \(default 'emd'\), not 1"):
        hs.merge(pair(), DATA, method="ot", solver=1, progress=False)
    with pytest.raises(hs.MergeError, match="max_sweeps takes a int"):
        hs.merge(pair(), None, method="weight", max_sweeps=True, example_inputs=DATA[0][:2], progress=False)
    with pytest.raises(hs.MergeError, match="one-shot iterator"):
        hs.merge(pair(), (x for x in DATA), method="zip", progress=False)
    with pytest.raises(hs.MergeError, match="at least two"):
        hs.merge(pair()[:1], DATA)
    a, b = pair()
    with torch.no_grad():
        b.layer1[0].conv1.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(hs.MergeError, match=r"model 1 \(ResNet\): layer1.0.conv1.weight holds NaN"):
        hs.merge([a, b], DATA, progress=False)
    with pytest.raises(hs.MergeError, match=r"differs in depth from model 0 .*\(stage0: 1 blocks in model 0.*depth='cla'"):
        hs.merge([hs.zoo.resnet((1, 1, 1)), hs.zoo.resnet((2, 1, 1))], DATA, progress=False)
    with pytest.raises(hs.MergeError, match="needs equal widths"):
        hs.merge([hs.zoo.resnet((1, 1, 1), 1), hs.zoo.resnet((1, 1, 1), 2)], DATA, method="permute", progress=False)
    with pytest.raises(hs.MergeError, match="outputs shape"):
        hs.merge([hs.zoo.mlp([8], num_classes=3), hs.zoo.mlp([8], num_classes=4)], [torch.randn(8, 64)],
                 progress=False)


def test_reset_batchnorm_recomputes_exact_statistics_and_keeps_dropout_off() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.drop = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.drop(self.conv(x)))

    net = Net().eval()
    g = ResetBatchNorm(DATA)(hs.trace(net, DATA[0][:2]))
    with torch.no_grad():
        feats = [net.conv(x).transpose(0, 1).reshape(4, -1) for x in DATA]
    # momentum=None: the plain average over batches of each batch's mean and unbiased variance
    torch.testing.assert_close(g.params["bn.running_mean"], torch.stack([f.mean(1) for f in feats]).mean(0))
    torch.testing.assert_close(g.params["bn.running_var"], torch.stack([f.var(1) for f in feats]).mean(0))
    assert torch.equal(net.bn.running_mean, torch.zeros(4))  # the input model is untouched


def test_weight_matching_recovers_a_planted_permutation() -> None:
    from hetsurgery.passes import ApplyPermutation, random_permutations

    model = hs.zoo.resnet((2, 1, 1)).eval()
    g = hs.trace(model, DATA[0][:2])
    planted = random_permutations(g, 3)
    b = ApplyPermutation(planted)(g)
    perms, report = weight_matching(b.params, g.params, list(g.permutable()))
    objective = report["objective"]
    assert report["converged"] and all(y >= x for x, y in itertools.pairwise(objective))
    for gid, p in planted.items():
        assert torch.equal(perms[gid], p)  # b's channel i is g's channel planted[i]


def test_weight_matching_in_small_pieces_matches_the_whole_tensor_way(monkeypatch: pytest.MonkeyPatch) -> None:
    import hetsurgery.plan.solvers.weight as wm
    from hetsurgery.passes import ApplyPermutation, random_permutations

    model = hs.zoo.vgg().eval()  # convs, a flatten (inner > 1) and linears
    torch.manual_seed(1)
    other = hs.zoo.vgg().eval()
    g, h = hs.trace(model, DATA[0][:2]), hs.trace(other, DATA[0][:2])
    groups = list(g.permutable())
    whole, report = weight_matching(g.params, h.params, groups)
    monkeypatch.setattr(wm, "PIECE", 50)  # every permuted copy in pieces of a few rows
    pieces, report_pieces = weight_matching(g.params, h.params, groups)
    assert all(torch.equal(whole[k], pieces[k]) for k in whole)
    assert report["objective"] == pytest.approx(report_pieces["objective"], rel=1e-9)
    planted = random_permutations(g, 4)
    found, _ = weight_matching(ApplyPermutation(planted)(g).params, g.params, groups)  # still in pieces
    assert all(torch.equal(found[k], planted[k]) for k in planted)


@pytest.mark.parametrize("name", ["densenet", "vgg", "resnet20"])
def test_all_slots_at_once_equals_slot_by_slot(name: str) -> None:
    """The one-gather path for scaled permutations against applying each slot in turn (concat offsets, flatten)."""
    from hetsurgery.ir import SlotMaps, slots_by_param, transform_params
    from hetsurgery.passes import random_permutations

    g = hs.trace(hs.zoo.ZOO[name]().eval(), DATA[0][:2])
    perms = random_permutations(g, 5)
    maps = SlotMaps({gid: (p, 0.25 + gid % 3) for gid, p in perms.items()}, {gid: (p, 1.0) for gid, p in perms.items()})
    by_param = slots_by_param(g.groups)
    fast = transform_params(g.params, by_param, maps)
    moved = 0
    for name_, slots in by_param.items():
        t = g.params[name_]
        for gid, slot in sorted(slots, key=lambda item: -item[1].offset):
            t = maps.apply(t, gid, slot)
        assert torch.equal(fast[name_], t), name_
        moved += not torch.equal(fast[name_], g.params[name_])
        assert fast[name_] is g.params[name_] or fast[name_].data_ptr() != g.params[name_].data_ptr()
    assert moved > len(by_param) // 2


def test_merge_options_are_one_frozen_value_checked_once_and_keywords_still_work() -> None:
    import dataclasses

    torch.manual_seed(0)
    a, b, x = hs.zoo.mlp([8, 8]), hs.zoo.mlp([8]), torch.randn(64, 64)
    o = hs.MergeOptions.of(method="zip", alpha=0.25, depth="lma", progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.method = "permute"  # type: ignore[misc]
    by_value, by_keywords = hs.merge([a, b], [x], o), hs.merge([a, b], [x], method="zip", alpha=0.25, depth="lma",
                                                               progress=False)
    assert all(torch.equal(t, by_keywords.model.state_dict()[k]) for k, t in by_value.model.state_dict().items())
    with pytest.raises(hs.MergeInputError, match="either as options= or as keywords, not both \\(method given"):
        hs.merge([a, b], [x], o, method="permute")
    for bad, says in (({"anchor": -1}, "anchor must be a model index"), ({"memory_budget": 0}, "memory_budget"),
                      ({"progress": "yes"}, "progress must be True or False"), ({"beta": -1}, "option beta")):
        with pytest.raises(hs.MergeInputError, match=says):
            hs.MergeOptions.of(**bad)  # type: ignore[arg-type]
    assert hs.align([a, b], [x], hs.MergeOptions.of(method="permute", depth="lma", progress=False))[0](x).shape == (64, 10)


def test_assembly_options_are_one_frozen_value_too() -> None:
    base, donor, x = hs.zoo.mlp([8, 8]), hs.zoo.mlp([12, 8]), torch.randn(64, 64)
    o = hs.AssemblyOptions.of(layers=["layers_0"], lam=0.5, align="mal-pad", progress=False)
    r = hs.assemble(base, [donor], [x], o)
    assert [(u.unit, u.lam) for u in r.units] == [("layers_0", 0.5)]
    with pytest.raises(hs.MergeInputError, match="either as options= or as keywords"):
        hs.assemble(base, [donor], [x], o, lam=0.2)
    with pytest.raises(hs.MergeInputError, match="layers must be 'all' or a list"):
        hs.AssemblyOptions.of(layers="first")
