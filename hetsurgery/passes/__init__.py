"""Passes: ``ModelGraph -> ModelGraph`` rewrites, each a frozen dataclass, run by ``Pipeline``."""

from hetsurgery.passes.apply_permutation import ApplyPermutation, random_permutations
from hetsurgery.passes.base import Pass, Pipeline
from hetsurgery.passes.reset_batchnorm import ResetBatchNorm

__all__ = ["ApplyPermutation", "Pass", "Pipeline", "ResetBatchNorm", "random_permutations"]
