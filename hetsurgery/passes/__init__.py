"""Passes: ``ModelGraph -> ModelGraph`` rewrites, each a frozen dataclass, run by ``Pipeline``."""

from hetsurgery.passes.apply_permutation import ApplyPermutation, random_permutations
from hetsurgery.passes.base import Pass, Pipeline
from hetsurgery.passes.pad_width import PadWidth
from hetsurgery.passes.reset_batchnorm import ResetBatchNorm
from hetsurgery.passes.zip_neurons import ZipNeurons

__all__ = ["ApplyPermutation", "PadWidth", "Pass", "Pipeline", "ResetBatchNorm", "ZipNeurons", "random_permutations"]
