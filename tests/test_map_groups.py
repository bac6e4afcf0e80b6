"""``MapGroups``: the one pass that moves channels. Exact for permutations and zero padding (model run before and
after on random input with randomised BatchNorm statistics); ApplyPermutation and ZipNeurons are it with one
kind of map; a width plan is one per model, and merge, align and assembly realise plans with it."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise, rel_err

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, MapGroups, Pipeline, ZipNeurons, random_permutations

X = torch.randn(16, 1, 8, 8)


@pytest.mark.parametrize("name", ["resnet20", "vgg", "transformer", "densenet", "mobilenet"])
def test_permutations_and_zero_padding_are_exact(name: str) -> None:
    model = randomise(hs.zoo.ZOO[name](), 1)
    g = hs.trace(model, X[:2])
    perms = random_permutations(g, 2)
    moves = {gid: (p, 1.0) for gid, p in perms.items()}
    moved = Pipeline((MapGroups(moves, moves),))(g)  # the Pipeline checks it too
    pad = next(grp for grp in g.permutable() if grp.pad_ok)
    grow = torch.eye(pad.size + 3, pad.size, dtype=torch.float64)  # [I; 0]: three zero channels
    padded = MapGroups({pad.id: grow}, {pad.id: grow})(g)
    with torch.no_grad():
        want = model(X)
        assert rel_err(want, hs.to_module(moved)(X)) <= 1e-5
        assert rel_err(want, hs.to_module(padded)(X)) <= 1e-5
    assert padded.group(pad.id).size == pad.size + 3 and [p.name for p in padded.passes] == ["map-groups"]


def test_apply_permutation_and_zip_neurons_are_map_groups_with_one_kind_of_map(monkeypatch: pytest.MonkeyPatch) -> None:
    g = hs.trace(randomise(hs.zoo.mlp([8, 6], batch_norm=True), 3), torch.randn(2, 64))
    calls: list[str] = []
    real = MapGroups.rewrite

    def spy(self: MapGroups, graph: hs.ModelGraph) -> hs.ModelGraph:
        calls.append(type(self).__name__)
        return real(self, graph)

    monkeypatch.setattr(MapGroups, "rewrite", spy)
    perm = ApplyPermutation(random_permutations(g, 1))(g)
    m = torch.eye(8)[:5]  # keep five of the eight channels
    zipped = ZipNeurons(0, m, m.T)(g)
    assert calls == ["MapGroups", "MapGroups"]
    assert [p.name for p in perm.passes] == ["apply-permutation"] and zipped.group(0).size == 5


def test_merge_and_align_realise_the_plan_with_map_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    a, b = randomise(hs.zoo.resnet((1, 1, 1)), 1), randomise(hs.zoo.resnet((1, 1, 1)), 2)
    calls: list[int] = []
    real_rewrite, real_parameter = MapGroups.rewrite, MapGroups.parameter

    def rewrite(self: MapGroups, graph: hs.ModelGraph) -> hs.ModelGraph:
        calls.append(0)
        return real_rewrite(self, graph)

    def parameter(self: MapGroups, graph: hs.ModelGraph, name: str, maps: object = None) -> torch.Tensor:
        calls.append(1)
        return real_parameter(self, graph, name, maps)  # type: ignore[arg-type]

    monkeypatch.setattr(MapGroups, "rewrite", rewrite)
    monkeypatch.setattr(MapGroups, "parameter", parameter)
    r = hs.merge([a, b], [X], method="zip", progress=False)
    assert calls.count(0) == 1 and calls.count(1) == len(r.graph.params) - sum(
        not t.is_floating_point() for t in r.graph.params.values())  # the anchor whole, the other tensor by tensor
    assert "map-groups" in [p.name for p in r.graph.passes]
    calls.clear()
    aligned = hs.align([a, b], [X], method="permute", progress=False)
    assert calls == [0, 0] and len(aligned) == 2
