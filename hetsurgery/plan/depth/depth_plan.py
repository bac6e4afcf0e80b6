"""``DepthPlan``: how the units of shallower models meet the units of the anchor, stage by stage.

A ``StageAlignment`` records one stage pair of one model ``k`` (the shallower side) and the anchor (the
deeper side): both stage keys, both unit key lists in order, the map ``f`` (shallow unit ``i`` ↔ deep
unit ``f[i]``), the ``m x n`` score matrix it was solved on, what that score is, the method and the
balance. The objective, the segments and the balancing steps (insertions for ``add``, fusions for
``merge``) follow from those fields and are derived, never stored apart. A ``DepthPlan`` holds the
stage alignments of several models to one anchor; ``to_dict`` is the ``"depth"`` value of ``plan.json``.

>>> st = align_stage("layer1", "layer1", ["s0", "s1"], ["d0", "d1", "d2"],
...                  [[0.9, 0.5, 0.1], [0.2, 0.4, 0.8]], DepthMethod.SMA, Balance.ADD)
>>> print(st)
layer1: [0→0, 1→2] sma score 1.7; add +1 after 1
>>> plan = DepthPlan(anchor=0, models=(ModelDepth(1, (st,)),))
>>> DepthPlan.from_json(plan.to_json()) == plan
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hetsurgery.plan.depth.balance import Balance, Fusion, Insertion, fusions, insertions, positions
from hetsurgery.plan.depth.dp import (
    DepthError,
    DepthMethod,
    MatrixLike,
    as_matrix,
    check_map,
    objective,
    segments,
    solve,
)


class Score(Enum):
    """What a stage alignment's matrix holds."""

    CKA = "cka"  # linear CKA, a similarity (SMA, LMA)
    CKA_DISTANCE = "1-cka"  # 1 - linear CKA, a cost (CLA)
    WIDTH = "width"  # squared difference of widths, a data-free cost (CLA)

    @property
    def is_similarity(self) -> bool:
        return self is Score.CKA


@dataclass(frozen=True)
class StageAlignment:
    stage_shallow: str
    stage_deep: str
    units_shallow: tuple[str, ...]
    units_deep: tuple[str, ...]
    map: tuple[int, ...]
    scores: tuple[tuple[float, ...], ...]
    score: Score
    method: DepthMethod
    balance: Balance

    def __post_init__(self) -> None:
        where = f"stage {self.stage_shallow!r}"
        for name, enum in (("score", Score), ("method", DepthMethod), ("balance", Balance)):
            if not isinstance(getattr(self, name), enum):
                raise DepthError(f"{where}: {name} must be a {enum.__name__}, got {getattr(self, name)!r}")
        m, n = len(self.units_shallow), len(self.units_deep)
        for side, units in (("shallow", self.units_shallow), ("deep", self.units_deep)):
            if not isinstance(units, tuple) or not all(isinstance(u, str) for u in units):
                raise DepthError(f"{where}: units_{side} must be a tuple of str, got {units!r}")
            if len(set(units)) != len(units):
                raise DepthError(f"{where}: a {side} unit is listed twice: {units}")
        if len(self.scores) != m or any(len(row) != n for row in self.scores):
            raise DepthError(f"{where}: scores must be {m} x {n} (shallow units x deep units)")
        if any(not isinstance(v, float) or not math.isfinite(v) for row in self.scores for v in row):
            raise DepthError(f"{where}: scores must be finite floats")
        if not isinstance(self.map, tuple):
            raise DepthError(f"{where}: map must be a tuple of ints, got {self.map!r}")
        as_matrix(self.scores, self.method)  # m <= n
        check_map(self.method, self.map, m, n)
        if self.score.is_similarity != self.method.maximises:
            kind = "a similarity" if self.method.maximises else "a cost"
            raise DepthError(f"{where}: {self.method.value} needs {kind}, not score {self.score.value!r}")

    @property
    def objective(self) -> float:
        return objective(self.method, self.scores, self.map)

    @property
    def segments(self) -> tuple[tuple[int, ...], ...]:
        return segments(self.map, len(self.units_deep))

    @property
    def positions(self) -> tuple[int, ...]:
        return positions(self.method, self.map, len(self.units_deep))

    @property
    def insertions(self) -> tuple[Insertion, ...]:
        return insertions(self.method, self.map, len(self.units_deep))

    @property
    def fusions(self) -> tuple[Fusion, ...]:
        return fusions(self.method, self.map, len(self.units_deep))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the derived values (objective, segments, the balancing steps) come along for readers."""
        out: dict[str, Any] = {
            "stage_shallow": self.stage_shallow, "stage_deep": self.stage_deep,
            "units_shallow": list(self.units_shallow), "units_deep": list(self.units_deep),
            "map": list(self.map), "scores": [list(row) for row in self.scores], "score": self.score.value,
            "method": self.method.value, "balance": self.balance.value,
            "objective": self.objective, "segments": [list(s) for s in self.segments],
        }
        if self.balance is Balance.ADD:
            out["insertions"] = [{"after": s.after, "count": s.count} for s in self.insertions]
        else:
            out["fusions"] = [{"shallow": s.shallow, "deep": list(s.deep)} for s in self.fusions]
        return out

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> StageAlignment:
        """Inverse of ``to_dict``. Unknown keys are refused; derived keys may be left out, and when
        present must agree with the map (edit the map, drop them)."""
        _keys(raw, _STAGE_KEYS, _DERIVED_KEYS, "stage alignment")
        try:
            st = StageAlignment(
                _str(raw["stage_shallow"]), _str(raw["stage_deep"]),
                _tuple(raw["units_shallow"]), _tuple(raw["units_deep"]), _tuple(raw["map"]),
                tuple(tuple(_float(v) for v in _tuple(row)) for row in _tuple(raw["scores"])),
                Score(raw["score"]), DepthMethod(raw["method"]), Balance(raw["balance"]))
        except DepthError:
            raise
        except (TypeError, ValueError) as e:
            raise DepthError(f"stage alignment {raw.get('stage_shallow')!r}: {e}") from e
        derived = st.to_dict()
        for key in _DERIVED_KEYS & raw.keys():
            if key not in derived:
                raise DepthError(f"stage {st.stage_shallow!r}: {key!r} does not go with balance {st.balance.value!r}")
            same = (math.isclose(_float(raw[key]), derived[key], rel_tol=1e-9, abs_tol=1e-12) if key == "objective"
                    else raw[key] == derived[key])
            if not same:
                raise DepthError(f"stage {st.stage_shallow!r}: {key} {raw[key]!r} does not follow from map "
                                 f"{list(st.map)} (it gives {derived[key]!r}); fix or remove it")
        return st

    def __str__(self) -> str:
        name = self.stage_shallow if self.stage_shallow == self.stage_deep else f"{self.stage_shallow}/{self.stage_deep}"
        pairs = ", ".join(f"{i}→{j}" for i, j in enumerate(self.map))
        kind = "score" if self.method.maximises else "cost"
        if self.balance is Balance.ADD:
            steps = ", ".join(f"+{s.count} after {s.after}" for s in self.insertions)
        else:
            steps = ", ".join(f"fuse {s.deep[0]}..{s.deep[-1]}" for s in self.fusions)
        return (f"{name}: [{pairs}] {self.method.value} {kind} {self.objective:.4g}; "
                f"{self.balance.value} {steps or 'nothing'}")


def align_stage(stage_shallow: str, stage_deep: str, units_shallow: Sequence[str], units_deep: Sequence[str],
                scores: MatrixLike, method: DepthMethod, balance: Balance,
                score: Score | None = None) -> StageAlignment:
    """Solve one stage pair with ``method`` and record it. ``score`` defaults to CKA for SMA and LMA and
    to ``1 - CKA`` for CLA (pass ``Score.WIDTH`` with ``cka.width_cost``)."""
    matrix = as_matrix(scores, method)
    kind = score if score is not None else (Score.CKA if method.maximises else Score.CKA_DISTANCE)
    return StageAlignment(stage_shallow, stage_deep, tuple(units_shallow), tuple(units_deep),
                          solve(method, matrix).map, tuple(tuple(row) for row in matrix), kind, method, balance)


@dataclass(frozen=True)
class ModelDepth:
    """The stage alignments of one model to the anchor, and the structural passes that balanced it (specs, in the
    order they ran: ``hetsurgery.passes.replay`` applies them to the model traced again)."""

    model: int
    stages: tuple[StageAlignment, ...]
    passes: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for side in ("stage_shallow", "stage_deep"):
            keys = [getattr(s, side) for s in self.stages]
            if len(set(keys)) != len(keys):
                raise DepthError(f"model {self.model}: a stage is aligned twice ({side}: {keys})")


@dataclass(frozen=True)
class DepthPlan:
    """Depth alignments of several models to one ``anchor`` (the deepest by default)."""

    anchor: int
    models: tuple[ModelDepth, ...]

    def __post_init__(self) -> None:
        ks = [md.model for md in self.models]
        if len(set(ks)) != len(ks) or self.anchor in ks:
            raise DepthError(f"depth plan: models {ks} must be distinct and exclude the anchor {self.anchor}")

    def model(self, k: int) -> ModelDepth:
        for md in self.models:
            if md.model == k:
                return md
        raise DepthError(f"depth plan has no model {k}; it aligns {[md.model for md in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor,
                "models": [{"model": md.model, "stages": [s.to_dict() for s in md.stages],
                            "passes": [dict(p) for p in md.passes]} for md in self.models]}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> DepthPlan:
        _keys(raw, frozenset({"anchor", "models"}), frozenset(), "depth plan")
        models = []
        for md in raw["models"]:
            _keys(md, frozenset({"model", "stages"}), frozenset({"passes"}), "depth plan model")
            passes = _tuple(md.get("passes", []))
            if not all(isinstance(p, Mapping) and isinstance(p.get("pass"), str) for p in passes):
                raise DepthError(f"depth plan model {md['model']!r}: passes must be pass specs with a \"pass\" name")
            models.append(ModelDepth(_int(md["model"]), tuple(StageAlignment.from_dict(s) for s in md["stages"]),
                                     tuple(dict(p) for p in passes)))
        return DepthPlan(_int(raw["anchor"]), tuple(models))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @staticmethod
    def from_json(text: str) -> DepthPlan:
        return DepthPlan.from_dict(json.loads(text))

    def __str__(self) -> str:
        lines = [f"depth plan, anchor {self.anchor}"]
        for md in self.models:
            lines.append(f"model {md.model}:")
            lines += [f"  {s}" for s in md.stages]
        return "\n".join(lines)


_STAGE_KEYS = frozenset({"stage_shallow", "stage_deep", "units_shallow", "units_deep", "map", "scores",
                         "score", "method", "balance"})
_DERIVED_KEYS = frozenset({"objective", "segments", "insertions", "fusions"})


def _keys(raw: Mapping[str, Any], required: frozenset[str], optional: frozenset[str], what: str) -> None:
    if not isinstance(raw, Mapping):
        raise DepthError(f"{what}: expected an object, got {type(raw).__name__}")
    missing, unknown = required - raw.keys(), raw.keys() - required - optional
    if missing or unknown:
        raise DepthError(f"{what}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DepthError(f"expected a number, got {v!r}")
    return float(v)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise DepthError(f"expected a string, got {v!r}")
    return v


def _tuple(v: Any) -> tuple[Any, ...]:
    if not isinstance(v, (list, tuple)):
        raise DepthError(f"expected a list, got {v!r}")
    return tuple(v)


def _int(v: Any) -> int:
    if type(v) is not int:
        raise DepthError(f"expected an int, got {v!r}")
    return v
