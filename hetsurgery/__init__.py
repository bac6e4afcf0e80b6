"""hetsurgery: merge neural networks of different depth and width without training.

>>> import torch, hetsurgery
>>> g = hetsurgery.trace(hetsurgery.zoo.resnet20(in_channels=1), torch.randn(2, 1, 8, 8))
>>> g.coverage() > 0.95
True
"""

from hetsurgery import evaluate, stream, zoo
from hetsurgery.assembly import AssemblyOptions, AssemblyResult, Donor, assemble, find_lambda_threshold
from hetsurgery.errors import (
    ExportError,
    HetsurgeryError,
    InvalidInput,
    IRError,
    MergeError,
    MergeInputError,
    PassError,
    TracingError,
    UnalignedGroupWarning,
)
from hetsurgery.ir import Blocks, ModelGraph, OpKind, PermGroup, Role, Site, Slot
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging import MergeOptions, MergeResult, align, merge
from hetsurgery.tracing import trace

__all__ = [
    "AssemblyOptions",
    "AssemblyResult",
    "Blocks",
    "Donor",
    "ExportError",
    "HetsurgeryError",
    "IRError",
    "InvalidInput",
    "MergeError",
    "MergeInputError",
    "MergeOptions",
    "MergeResult",
    "ModelGraph",
    "OpKind",
    "PassError",
    "PermGroup",
    "Role",
    "Site",
    "Slot",
    "TracingError",
    "UnalignedGroupWarning",
    "align",
    "assemble",
    "evaluate",
    "find_lambda_threshold",
    "merge",
    "stream",
    "to_module",
    "trace",
    "zoo",
]
