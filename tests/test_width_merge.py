"""Merging models of different widths: elastic zipping, unequal-width OT, MAL; the width= option."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import randomise_calibrated, rel_err

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, PadWidth, Pipeline, random_permutations
from hetsurgery.plan.solvers.weight import weight_matching

X = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))
DATA = [X[i:i + 32] for i in range(0, 96, 32)]
MODELS = {
    "mlp": lambda: hs.zoo.mlp([32, 24]),
    "vgg": lambda: hs.zoo.vgg(),
    "resnet": lambda: hs.zoo.resnet((2, 1, 1)),
    "densenet": lambda: hs.zoo.densenet((2, 2)),
    "transformer": lambda: hs.zoo.transformer("manual", depth=1),
}


def widened(model: torch.nn.Module, seed: int) -> tuple[hs.ModelGraph, torch.nn.Module]:
    """A wider copy computing the same function: every pad-safe group padded, then everything permuted."""
    g = hs.trace(model, X[:2])
    wide = Pipeline(tuple(PadWidth(grp.id, grp.size + 2 + grp.id % 3) for grp in g.groups if grp.pad_ok))(g)
    wide = ApplyPermutation(random_permutations(wide, seed))(wide)
    return wide, hs.to_module(wide).eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_elastic_zip_with_a_widened_copy_gives_back_the_original(name: str) -> None:
    model = randomise_calibrated(MODELS[name](), X, seed=1)
    wide_graph, wide = widened(model, 4)
    r = hs.merge([model, wide], DATA, method="zip", reset_bn=False, progress=False)
    assert [g.size for g in r.graph.groups] == [g.size for g in wide_graph.groups]  # r = max width
    with torch.no_grad():
        assert rel_err(model(X), r.model(X)) <= 1e-4


@pytest.mark.parametrize("width", [None, "max"])
def test_mal_with_a_widened_copy_gives_back_the_original(width: str | None) -> None:
    model = randomise_calibrated(hs.zoo.resnet((2, 1, 1)), X, seed=2)
    wide_graph, wide = widened(model, 5)
    r = hs.merge([model, wide], DATA, method="mal", width=width, reset_bn=False, progress=False)
    expect = hs.trace(model, X[:2]) if width is None else wide_graph
    assert [g.size for g in r.graph.groups] == [g.size for g in expect.groups]
    with torch.no_grad():
        assert rel_err(model(X), r.model(X)) <= 1e-4
    report = r.plan.groups[0].mal[0]
    assert report.converged and report.iterations >= 1 and len(report.objective) == report.iterations


def test_mal_recovers_a_planted_map_and_its_objective_never_decreases() -> None:
    base = randomise_calibrated(hs.zoo.resnet((1, 1, 1)), X, seed=3)
    g = hs.trace(base, X[:2])
    pads = {grp.id: grp.size + 5 for grp in g.groups if grp.pad_ok}
    padded = Pipeline(tuple(PadWidth(gid, w) for gid, w in pads.items()))(g)
    planted = random_permutations(padded, 9)
    target = ApplyPermutation(planted)(padded)  # target = permuted, zero-padded base
    perms, report = weight_matching(padded.params, target.params, list(padded.permutable()))
    for grp in g.permutable():
        real = torch.argsort(planted[grp.id])[:grp.size]  # where each real base channel went
        assert torch.equal(perms[grp.id][:grp.size], real)
    objective = report["objective"]
    assert report["converged"] and all(b >= a for a, b in itertools.pairwise(objective))  # exactly, no tolerance
    for r in report["groups"].values():
        assert all(b >= a for a, b in itertools.pairwise(r["objective"]))


@pytest.mark.parametrize("pair", [
    (lambda: hs.zoo.resnet((1, 1, 1), 1), lambda: hs.zoo.resnet((1, 1, 1), 2)),
    (lambda: hs.zoo.mlp([32, 24]), lambda: hs.zoo.mlp([48, 16])),
    (lambda: hs.zoo.vgg(), lambda: hs.zoo.vgg()),
])
def test_mal_alternating_objective_is_monotone_on_unrelated_models_and_beats_one_lap(pair: tuple) -> None:
    a, b = pair[0](), pair[1]()
    plans = {m: hs.merge([a, b], None, method=m, example_inputs=X[:2], progress=False).plan
             for m in ("mal", "mal-pad")}
    report = plans["mal"].groups[0].mal[0]
    assert report.alternating and all(y >= x for x, y in itertools.pairwise(report.objective))
    final = {m: p.groups[0].mal[0].objective[-1] for m, p in plans.items()}
    assert final["mal"] >= final["mal-pad"]  # the alternation starts from the one pass and only climbs


def test_unequal_width_ot_and_zip_shapes_follow_the_width_option() -> None:
    torch.manual_seed(1)
    a, b = hs.zoo.mlp([16, 12]), hs.zoo.mlp([24, 8])
    data = [torch.randn(64, 64)]
    cases = [("zip", None, [24, 12]), ("zip", "min", [16, 8]), ("zip", {0: 20}, [20, 12]), ("ot", None, [24, 12]),
             ("ot", 0, [16, 12]), ("ot", 1, [24, 8]), ("ot", "max", [24, 12]), ("mal", None, [16, 12]), ("mal", "max", [24, 12]),
             ("mal", 1, [24, 8]), ("ot-weights", 0, [16, 12]), ("ot-weights", None, [24, 12])]
    for label, width, expect in cases:
        method, options = label.removesuffix("-weights"), {"cost": "weights"} if label == "ot-weights" else {}
        r = hs.merge([a, b], data, method=method, width=width, progress=False, **options)
        assert [g.size for g in r.graph.groups][:2] == expect, (label, width)
        assert r.model(torch.randn(3, 64)).shape == (3, 10)
        for m in r.plan.groups.values():
            if method == "ot" and m.kind == "ot":  # sources split their outputs; targets average what reached them
                for t in m.unmerge:
                    torch.testing.assert_close(t.sum(1), torch.ones(t.shape[0], dtype=torch.float64))
                torch.testing.assert_close(sum(mm.sum(1) for mm in m.merge), torch.ones(m.size, dtype=torch.float64))
                for w, mm in zip(r.plan.weights, m.merge, strict=True):  # a model's share: its weight, or all, or none
                    assert all(any(abs(v - x) < 1e-9 for x in (0.0, w, 1.0)) for v in mm.sum(1).tolist())


def test_every_width_rule_picks_a_width() -> None:
    from hetsurgery.merging.widths import PICK, WidthRule

    assert set(PICK) == set(WidthRule)
    assert {rule: PICK[rule]([4, 8, 6], 2) for rule in WidthRule} == \
        {WidthRule.MAX: 8, WidthRule.MIN: 4, WidthRule.ANCHOR: 6}
    a, b = hs.zoo.mlp([8]), hs.zoo.mlp([12])
    for rule in WidthRule:  # the rule itself or its name
        for width in (rule, rule.value):
            r = hs.merge([a, b], [torch.randn(8, 64)], method="zip", width=width, reset_bn=False, progress=False)
            assert r.plan.groups[0].size == PICK[rule]([8, 12], 0)


def test_width_errors_name_the_group_and_the_reason() -> None:
    a, b = hs.zoo.transformer("manual", dim=32, depth=1), hs.zoo.transformer("manual", dim=48, depth=1)
    with pytest.raises(hs.MergeError, match=r"group 0 .*32/48.*cannot change its width: LayerNorm"):
        hs.merge([a, b], DATA, method="mal", progress=False)
    with pytest.raises(hs.MergeError, match="width= works with zip, ot and mal"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([8])], [torch.randn(8, 64)], method="permute", width="max")
    with pytest.raises(hs.MergeError, match="width must be"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([9])], [torch.randn(8, 64)], method="zip", width="widest")
    with pytest.raises(hs.MergeError, match="ot transports onto one model's neurons"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([12])], [torch.randn(8, 64)], method="ot", width={0: 10},
                 progress=False)
    with pytest.raises(hs.MergeError, match=r"group 0 .*width 1000 is outside 1..20"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([12])], [torch.randn(8, 64)], method="zip", width={0: 1000},
                 progress=False)
    with pytest.raises(hs.MergeError, match=r"whole number of channels, not 12\.7"):
        hs.merge([hs.zoo.mlp([8]), hs.zoo.mlp([12])], [torch.randn(8, 64)], method="zip", width={0: 12.7},
                 progress=False)


def test_ot_on_weights_merges_residual_models_of_different_widths() -> None:
    # the residual stream and the blocks' inner groups feed each other: solved twice, first with the
    # not-yet-solved input axes summarised by order-free sums
    torch.manual_seed(2)
    a, b = hs.zoo.resnet((1, 1, 1), 1), hs.zoo.resnet((1, 1, 1), 2)
    r = hs.merge([a, b], DATA, method="ot", cost="weights", width="max", progress=False)
    assert r.plan.widths() == {g.id: g.size for g in hs.trace(b, X[:2]).groups}
    assert r.model(X).shape == (len(X), 10)
    for m in r.plan.groups.values():
        if m.info.get("cost") == "weights":  # every source neuron's outgoing weights are split, never copied
            for t in m.unmerge:
                torch.testing.assert_close(t.sum(1), torch.ones(t.shape[0], dtype=torch.float64))
