"""The merge driver: trace → statistics → plan → combine → BatchNorm reset; and assembly (MAL)."""

from hetsurgery.merging.assembly import AssemblyResult, Donor, assemble
from hetsurgery.merging.driver import MergeReport, MergeResult, Planned, align, merge, plan_merge
from hetsurgery.merging.lambda_threshold import LambdaThreshold, find_lambda_threshold
from hetsurgery.merging.methods import METHODS

__all__ = ["METHODS", "AssemblyResult", "Donor", "LambdaThreshold", "MergeReport", "MergeResult", "Planned", "align",
           "assemble", "find_lambda_threshold", "merge", "plan_merge"]
