"""Depth alignment of models with different numbers of units: streamed linear CKA, the CLA / SMA / LMA
dynamic programmes, balancing (``add`` / ``merge``) and the serialisable ``DepthPlan``.

Everything here works on plain tensors and numbers; the graphs' units and stages come from elsewhere.
"""

from hetsurgery.plan.depth.balance import Balance, Fusion, Insertion, fusions, insertions, positions
from hetsurgery.plan.depth.cka import CKAError, StreamingCKA, linear_cka, width_cost
from hetsurgery.plan.depth.depth_plan import DepthPlan, ModelDepth, Score, StageAlignment, align_stage
from hetsurgery.plan.depth.dp import (
    SOLVERS,
    DepthError,
    DepthMethod,
    DepthSolution,
    check_map,
    cla,
    fixed_ends,
    lma,
    objective,
    segments,
    sma,
    solve,
)

__all__ = [
    "SOLVERS",
    "Balance",
    "CKAError",
    "DepthError",
    "DepthMethod",
    "DepthPlan",
    "DepthSolution",
    "Fusion",
    "Insertion",
    "ModelDepth",
    "Score",
    "StageAlignment",
    "StreamingCKA",
    "align_stage",
    "check_map",
    "cla",
    "fixed_ends",
    "fusions",
    "insertions",
    "linear_cka",
    "lma",
    "objective",
    "positions",
    "segments",
    "sma",
    "solve",
    "width_cost",
]
