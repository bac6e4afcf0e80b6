"""The depth anchor of a merge of models of different depth: the deepest, then the widest, or the one given."""

from __future__ import annotations

import pytest
import torch

import hetsurgery as hs

X = torch.randn(64, 64)


def _merge(hidden: list[list[int]], **kw: int) -> hs.MergeResult:
    models = [hs.zoo.mlp(h).eval() for h in hidden]
    return hs.merge(models, [X], method="zip", depth="lma", progress=False, reset_bn=False, **kw)


def test_the_deepest_model_is_the_anchor() -> None:
    r = _merge([[8, 8], [8, 8, 8], [16]])
    assert r.depth is not None and r.depth.anchor == 1
    assert len(hs.trace(r.model, X[:2]).stage("stage0")) == 3


def test_between_equally_deep_models_the_widest_is_the_anchor() -> None:
    r = _merge([[8, 8, 8], [16], [12, 12, 12]])
    assert r.depth is not None and r.depth.anchor == 2
    tie = _merge([[12, 12, 12], [16], [12, 12, 12]]).depth
    assert tie is not None and tie.anchor == 0  # then the first


def test_a_given_depth_anchor_wins() -> None:
    r = _merge([[8, 8, 8], [16, 16, 16], [12]], depth_anchor=0)
    assert r.depth is not None and r.depth.anchor == 0
    assert r.model.state_dict()["layers.0.weight"].shape[0] == 16  # zip keeps the widest widths


@pytest.mark.parametrize(("anchor", "says"), [
    (2, "depth anchor you chose \\(depth_anchor=2\\), which must be the deepest in every stage"),
    (3, "depth_anchor 3 is not one of the 3 models"),
    (-1, "depth_anchor must be a model index"),
])
def test_a_depth_anchor_that_cannot_be_one_is_refused(anchor: int, says: str) -> None:
    with pytest.raises(hs.MergeInputError, match=says):
        _merge([[8, 8, 8], [16, 16], [12]], depth_anchor=anchor)
