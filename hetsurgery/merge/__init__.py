"""The merge driver: trace → statistics → plan → combine → BatchNorm reset."""

from hetsurgery.merge.driver import MergeReport, MergeResult, Planned, align, merge, plan_merge
from hetsurgery.merge.methods import METHODS

__all__ = ["METHODS", "MergeReport", "MergeResult", "Planned", "align", "merge", "plan_merge"]
