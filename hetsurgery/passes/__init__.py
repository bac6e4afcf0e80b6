"""Passes: ``ModelGraph -> ModelGraph`` rewrites, each a frozen dataclass, run by ``Pipeline``."""

from hetsurgery.passes.apply_permutation import ApplyPermutation, random_permutations
from hetsurgery.passes.base import Pass, Pipeline, check_same_function
from hetsurgery.passes.fuse_relu_segment import FuseReluSegment
from hetsurgery.passes.insert_identity import InsertIdentity
from hetsurgery.passes.insert_post_norm_block import InsertPostNormBlock
from hetsurgery.passes.insert_zero_residual import InsertZeroResidual
from hetsurgery.passes.map_groups import MapGroups
from hetsurgery.passes.pad_width import PadWidth
from hetsurgery.passes.remove_block import RemoveBlock
from hetsurgery.passes.replay import from_spec, replay, specs
from hetsurgery.passes.reset_batchnorm import ResetBatchNorm
from hetsurgery.passes.zip_neurons import ZipNeurons

__all__ = ["ApplyPermutation", "FuseReluSegment", "InsertIdentity", "InsertPostNormBlock", "InsertZeroResidual", "MapGroups", "PadWidth", "Pass",
           "Pipeline", "RemoveBlock", "ResetBatchNorm", "ZipNeurons", "check_same_function", "from_spec",
           "random_permutations", "replay", "specs"]
