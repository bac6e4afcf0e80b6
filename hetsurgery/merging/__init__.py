"""The merge driver: trace → depth plan and balancing → statistics → width plan → combine → BatchNorm reset."""

from hetsurgery.merging.driver import MergeReport, MergeResult, Planned, align, merge, plan_merge
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.options import MergeOptions

__all__ = ["METHODS", "MergeOptions", "MergeReport", "MergeResult", "Planned", "align", "merge", "plan_merge"]
