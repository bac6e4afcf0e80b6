"""Plans: streaming statistics, the width-matching solvers and the serialisable ``WidthPlan``; depth
alignment in ``hetsurgery.plan.depth``.

Every solver is a pure function from statistics (or weights) to one ``GroupMatch`` per group: ``permute``
(activation matching), ``weight_matching`` (Git Re-Basin), ``ot_match`` / ``ot_weight_matches``
(OTFusion on activations / on weights), ``zip_match`` (ZipIt!, elastic) and ``mal_match`` (Model Assembly
Learning).

>>> import torch, hetsurgery as hs
>>> from hetsurgery import plan
>>> g = hs.trace(hs.zoo.mlp([4], in_features=3, num_classes=2), torch.randn(2, 3))
>>> stats = plan.collect_stats([g, g], [torch.randn(16, 3)], progress=False)
>>> match = plan.permute(0, stats[0], g.group(0).structure, (0.5, 0.5))
>>> match.kind is plan.MatchKind.PERMUTATION, match.info["perms"][1]
(True, [0, 1, 2, 3])
"""

from hetsurgery.plan import depth
from hetsurgery.plan.depth import DepthMethod, DepthPlan, StreamingCKA, cla, linear_cka, lma, sma
from hetsurgery.plan.signature import channel_signature, joint_signature
from hetsurgery.plan.solvers.lap import best_permutation
from hetsurgery.plan.solvers.mal import mal_match
from hetsurgery.plan.solvers.ot import OTCost, OTSolver, coupling, ot_match
from hetsurgery.plan.solvers.ot_weights import ot_weight_matches
from hetsurgery.plan.solvers.permute import permute
from hetsurgery.plan.solvers.weight import weight_matching
from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats, collect_stats
from hetsurgery.plan.width_plan import GroupMatch, MatchKind, WidthPlan

__all__ = [
    "DepthMethod",
    "DepthPlan",
    "GroupMatch",
    "GroupStats",
    "MatchKind",
    "OTCost",
    "OTSolver",
    "StreamingCKA",
    "WidthPlan",
    "best_permutation",
    "channel_signature",
    "cla",
    "collect_stats",
    "coupling",
    "depth",
    "joint_signature",
    "linear_cka",
    "lma",
    "mal_match",
    "ot_match",
    "ot_weight_matches",
    "permute",
    "sma",
    "weight_matching",
    "zip_match",
]
