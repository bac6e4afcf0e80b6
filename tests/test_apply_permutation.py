"""ApplyPermutation: golden IR text, exactness, refusals; Pipeline names the failing pass."""

from __future__ import annotations

import pytest
import torch

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, Pipeline, random_permutations

GOLDEN_MLP_BN = """\
group 0 size=3 blocks=free label=layers_0
  produce layers.0.bias[0]
  produce layers.0.weight[0]
  produce layers.1.bias[0]
  produce layers.1.running_mean[0]
  produce layers.1.running_var[0]
  produce layers.1.weight[0]
  consume layers.3.weight[1]
group 1 size=2 blocks=free frozen='model output' label=layers_3
  produce layers.3.bias[0]
  produce layers.3.weight[0]"""


def graph() -> hs.ModelGraph:
    torch.manual_seed(0)
    return hs.trace(hs.zoo.mlp([3], in_features=4, num_classes=2, batch_norm=True), torch.randn(2, 4))


def test_golden_groups_before_and_after() -> None:
    g = graph()
    assert g.dump() == GOLDEN_MLP_BN
    after = ApplyPermutation({0: torch.tensor([2, 0, 1])})(g)
    assert after.dump() == GOLDEN_MLP_BN  # permuting moves values, never the structure
    for name in ("layers.0.weight", "layers.1.running_mean", "layers.1.running_var"):
        assert torch.equal(after.params[name], g.params[name][[2, 0, 1]])
    assert torch.equal(after.params["layers.3.weight"], g.params["layers.3.weight"][:, [2, 0, 1]])


def test_input_graph_is_not_touched() -> None:
    g = graph()
    before = {k: v.clone() for k, v in g.params.items()}
    ApplyPermutation(random_permutations(g, 3))(g)
    assert all(torch.equal(before[k], g.params[k]) for k in before)


def test_refuses_frozen_groups_and_non_permutations() -> None:
    g = graph()
    with pytest.raises(hs.PassError, match="frozen"):
        ApplyPermutation({1: torch.tensor([1, 0])})(g)
    with pytest.raises(hs.PassError, match="not a permutation"):
        ApplyPermutation({0: torch.tensor([0, 0, 1])})(g)


def test_refuses_moving_channels_between_blocks() -> None:
    g = hs.trace(hs.zoo.transformer("manual", dim=8, heads=2, depth=1), torch.randn(2, 1, 8, 8))
    heads = next(grp for grp in g.groups if grp.structure.count == 2)
    bad = torch.tensor([4, 1, 2, 3, 0, 5, 6, 7])
    with pytest.raises(hs.PassError, match="its 2 blocks"):
        ApplyPermutation({heads.id: bad})(g)


def test_random_permutations_respect_blocks() -> None:
    g = hs.trace(hs.zoo.mobilenet(), torch.randn(2, 1, 8, 8))
    for gid, perm in random_permutations(g, 0).items():
        b = g.group(gid).structure
        assert torch.equal(perm // b.size, torch.arange(b.total) // b.size)


def test_pipeline_names_the_failing_pass() -> None:
    g = graph()
    pipe = Pipeline((ApplyPermutation({0: torch.tensor([1, 2, 0])}), ApplyPermutation({1: torch.tensor([1, 0])})))
    with pytest.raises(hs.PassError, match=r"pass apply-permutation failed \(passes before it: apply-permutation\)"):
        pipe(g)


def test_pipeline_verifies_between_passes() -> None:
    from dataclasses import dataclass, replace
    from typing import ClassVar

    @dataclass(frozen=True)
    class Truncate:
        name: ClassVar[str] = "truncate"

        def __call__(self, g: hs.ModelGraph) -> hs.ModelGraph:
            return replace(g, params={**g.params, "layers.0.weight": g.params["layers.0.weight"][:1]})

    with pytest.raises(hs.PassError, match=r"(?s)truncate.*exceeds"):
        Pipeline((Truncate(),))(graph())


@pytest.mark.parametrize("perm", [torch.tensor([0.0, 1.0, 2.7]), torch.tensor([2.0, 0.0, 1.0]),
                                  torch.tensor([True, False, True]), [0.0, 2.0, 1.0]])
def test_refuses_non_integer_permutations(perm: object) -> None:
    with pytest.raises(hs.PassError, match=r"group 0 .*integer"):
        ApplyPermutation({0: perm})(graph())  # type: ignore[dict-item]


def test_accepts_integer_lists_and_int32() -> None:
    g = graph()
    ref = ApplyPermutation({0: torch.tensor([2, 0, 1])})(g)
    for perm in ([2, 0, 1], torch.tensor([2, 0, 1], dtype=torch.int32)):
        out = ApplyPermutation({0: perm})(g)  # type: ignore[dict-item]
        assert all(torch.equal(out.params[k], ref.params[k]) for k in ref.params)


def test_pipeline_wraps_unknown_group_with_the_pass_names() -> None:
    pipe = Pipeline((ApplyPermutation({0: torch.tensor([1, 2, 0])}), ApplyPermutation({99: torch.tensor([0, 1])})))
    with pytest.raises(hs.PassError, match=r"apply-permutation failed \(passes before it: apply-permutation\).*no group 99") \
            as info:
        pipe(graph())
    assert isinstance(info.value.__cause__, hs.IRError)


def test_pipeline_wraps_unexpected_exceptions() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class Broken:
        name: ClassVar[str] = "broken"

        def __call__(self, g: hs.ModelGraph) -> hs.ModelGraph:
            return {}["missing"]  # a pass's own bug, not a HetsurgeryError

    pipe = Pipeline((ApplyPermutation({0: torch.tensor([1, 2, 0])}), Broken()))
    with pytest.raises(hs.PassError, match=r"pass broken failed \(passes before it: apply-permutation\): KeyError") as info:
        pipe(graph())
    assert isinstance(info.value.__cause__, KeyError)
