"""DepthPlan: JSON round trip (floats exact), derived values follow the map, strict parsing, readable text."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from hetsurgery.plan.depth import (
    Balance,
    DepthError,
    DepthMethod,
    DepthPlan,
    ModelDepth,
    Score,
    StageAlignment,
    align_stage,
    cla,
    lma,
    sma,
    width_cost,
)

AWKWARD = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 2.0**-40, math.pi]


def _plan() -> DepthPlan:
    rng = np.random.default_rng(0)
    s1 = rng.random((3, 5))
    s1[0, :len(AWKWARD) - 2] = AWKWARD[:5]  # floats whose decimal form is long or extreme
    s1[1, :2] = AWKWARD[5:]
    one = align_stage("layer1", "layer1", ["layer1.0", "layer1.1", "layer1.2"],
                      [f"layer1.{i}" for i in range(5)], s1, DepthMethod.SMA, Balance.ADD)
    two = align_stage("layer2", "layer2", ["layer2.0", "layer2.1"], [f"layer2.{i}" for i in range(4)],
                      torch.from_numpy(rng.random((2, 4))), DepthMethod.LMA, Balance.MERGE)
    three = align_stage("features.0", "features.1", ["conv1", "conv2"], ["conv1", "conv2", "conv3"],
                        width_cost([16, 32], [16, 24, 32]), DepthMethod.CLA, Balance.ADD, Score.WIDTH)
    four = align_stage("layer1", "layer1", ["a"], ["b0", "b1"], 1.0 - torch.tensor([[0.8, 0.6]]),
                       DepthMethod.CLA, Balance.MERGE)
    return DepthPlan(anchor=0, models=(ModelDepth(1, (one, two)), ModelDepth(2, (three,)), ModelDepth(3, (four,))))


def test_round_trip_is_exact_floats_included() -> None:
    plan = _plan()
    back = DepthPlan.from_json(plan.to_json())
    assert back == plan
    assert back.models[0].stages[0].scores == plan.models[0].stages[0].scores
    assert back.models[0].stages[0].scores[0][:5] == tuple(AWKWARD[:5])
    embedded = json.loads(json.dumps({"version": 2, "depth": plan.to_dict(), "width": {}}))
    assert DepthPlan.from_dict(embedded["depth"]) == plan


def test_stage_records_what_the_solver_found() -> None:
    plan = _plan()
    one, two = plan.model(1).stages
    (three,) = plan.model(2).stages
    (four,) = plan.model(3).stages
    assert (one.map, one.objective) == (sma(one.scores).map, sma(one.scores).objective)
    assert (two.map, two.objective) == (lma(two.scores).map, lma(two.scores).objective)
    assert three.map == cla(width_cost([16, 32], [16, 24, 32])).map == (0, 2)
    assert three.objective == 0.0 and three.insertions[0].after == 0
    assert four.map == (0,) and four.objective == pytest.approx(0.2)
    assert [f.deep for f in four.fusions] == [(0, 1)]  # CLA with one shallow unit fuses the whole stage
    assert one.score is Score.CKA and four.score is Score.CKA_DISTANCE


def test_dict_carries_the_derived_values_for_readers() -> None:
    st = _plan().model(1).stages[0]
    d = st.to_dict()
    assert d["objective"] == st.objective
    assert d["segments"] == [list(s) for s in st.segments]
    assert d["insertions"] == [{"after": s.after, "count": s.count} for s in st.insertions]
    assert "fusions" not in d
    merged = _plan().model(1).stages[1].to_dict()
    assert "insertions" not in merged and merged["fusions"]


def _stage_dict() -> dict[str, Any]:
    return json.loads(json.dumps(_plan().model(1).stages[0].to_dict()))


def test_an_edited_map_needs_its_derived_values_dropped_or_fixed() -> None:
    d = _stage_dict()
    d["map"] = [1, 3, 4] if d["map"] != [1, 3, 4] else [0, 3, 4]
    with pytest.raises(DepthError, match="does not follow from map"):
        StageAlignment.from_dict(d)
    for key in ("objective", "segments", "insertions"):
        del d[key]
    st = StageAlignment.from_dict(d)  # a forced alignment: any map its method allows
    assert list(st.map) == d["map"]
    assert st.objective == sum(st.scores[i][j] for i, j in enumerate(st.map))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(extra=1), "unknown keys \\['extra'\\]"),
    (lambda d: d.pop("units_deep"), "missing keys \\['units_deep'\\]"),
    (lambda d: d.update(method="dtw"), "'dtw' is not a valid DepthMethod"),
    (lambda d: d.update(score="1-cka"), "sma needs a similarity"),
    (lambda d: d.update(map=[0.0, 2, 4]), "ints"),
    (lambda d: d.update(map=[0, 2, 3]), "fixes"),
    (lambda d: d.update(units_shallow=["a", "a", "b"]), "listed twice"),
    (lambda d: d.update(units_shallow="abc"), "expected a list"),
    (lambda d: d.update(stage_deep=1), "expected a string"),
    (lambda d: d["scores"].pop(), "scores must be 3 x 5"),
    (lambda d: d["scores"][0].__setitem__(0, "x"), "expected a number"),
    (lambda d: d.update(fusions=[]), "does not go with balance 'add'"),
    (lambda d: d.update(objective=d["objective"] + 1e-3), "objective"),
])
def test_malformed_stage_dicts_are_refused(edit: Any, message: str) -> None:
    d = _stage_dict()
    edit(d)
    with pytest.raises(DepthError, match=message):
        StageAlignment.from_dict(d)


def test_plan_level_checks() -> None:
    plan = _plan()
    st = plan.model(1).stages[0]
    with pytest.raises(DepthError, match="distinct and exclude the anchor"):
        DepthPlan(anchor=1, models=plan.models)
    with pytest.raises(DepthError, match="distinct"):
        DepthPlan(anchor=0, models=(plan.models[0], plan.models[0]))
    with pytest.raises(DepthError, match="aligned twice"):
        ModelDepth(4, (st, replace(st, stage_deep="layer9")))
    with pytest.raises(DepthError, match="no model 7"):
        plan.model(7)
    with pytest.raises(DepthError, match="unknown keys"):
        DepthPlan.from_dict({**plan.to_dict(), "widths": []})
    with pytest.raises(DepthError, match="expected an int"):
        DepthPlan.from_dict({**plan.to_dict(), "anchor": "0"})
    with pytest.raises(DepthError, match="1 <= m <= n"):
        align_stage("s", "s", ["a", "b"], ["c"], [[1.0], [1.0]], DepthMethod.SMA, Balance.ADD)
    with pytest.raises(DepthError, match="must be a Balance"):
        replace(st, balance="add")
    with pytest.raises(DepthError, match="finite"):
        replace(st, scores=((float("nan"),) * 5, *st.scores[1:]))


def test_text_has_one_line_per_stage_pair() -> None:
    text = str(_plan())
    lines = text.splitlines()
    assert lines[0] == "depth plan, anchor 0"
    one, two = _plan().model(1).stages
    assert lines[1:4] == ["model 1:", f"  {one}", f"  {two}"]
    assert str(one).startswith("layer1: [0→") and " sma score " in str(one) and "; add +" in str(one)
    assert " lma score " in str(two) and "; merge fuse " in str(two)
    assert str(_plan().model(2).stages[0]) == "features.0/features.1: [0→0, 1→2] cla cost 0; add +1 after 0"
    assert str(_plan().model(3).stages[0]) == "layer1: [0→0] cla cost 0.2; merge fuse 0..1"
