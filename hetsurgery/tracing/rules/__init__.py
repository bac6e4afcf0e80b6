"""The channel rules: one function per ``OpKind``, in a literal table that a test checks is total.

A rule reads the lifter values of its node's inputs and returns the value of its output, adding slots,
sites, joins and freezes to the ``Lifter`` as it goes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx

from hetsurgery.ir import OpKind
from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules import (
    attention,
    einsum,
    extremum,
    layers,
    pointwise,
    reshape,
    shifts,
    split,
    structural,
)
from hetsurgery.tracing.values import Value

Rule = Callable[[Lifter, fx.Node], Value]

RULES: dict[OpKind, Rule] = {
    OpKind.PLACEHOLDER: structural.placeholder,
    OpKind.OUTPUT: structural.output,
    OpKind.GET_ATTR: structural.get_attr,
    OpKind.LINEAR: layers.linear,
    OpKind.FUNCTIONAL_LINEAR: layers.functional_linear,
    OpKind.ADDMM: layers.addmm,
    OpKind.CONV: layers.conv,
    OpKind.BATCH_NORM: layers.batch_norm,
    OpKind.LAYER_NORM: layers.layer_norm,
    OpKind.GROUP_NORM: layers.group_norm,
    OpKind.EMBEDDING: layers.embedding,
    OpKind.MULTIHEAD_ATTENTION: attention.multihead_attention,
    OpKind.ELEMENTWISE: pointwise.elementwise,
    OpKind.SPATIAL: pointwise.spatial,
    OpKind.BINARY: pointwise.binary,
    OpKind.WHERE: pointwise.where,
    OpKind.CONCAT: pointwise.concat,
    OpKind.SPLIT: split.split,
    OpKind.ROLL: shifts.roll,
    OpKind.REPEAT: reshape.repeat_interleave,
    OpKind.FLATTEN: reshape.flatten,
    OpKind.RESHAPE: reshape.reshape,
    OpKind.TRANSPOSE: reshape.transpose,
    OpKind.UNSQUEEZE: reshape.unsqueeze,
    OpKind.REDUCE: pointwise.reduce,
    OpKind.EXTREMUM: extremum.extremum,
    OpKind.SOFTMAX: pointwise.softmax,
    OpKind.NORMALIZE: pointwise.normalize,
    OpKind.MATMUL: attention.matmul,
    OpKind.EINSUM: einsum.einsum,
    OpKind.ATTENTION: attention.scaled_dot_product_attention,
    OpKind.GETITEM: structural.getitem,
    OpKind.CONTAINER: structural.container,
    OpKind.SHAPE: structural.shape_read,
    OpKind.UNKNOWN: structural.unknown,
}

__all__ = ["RULES", "Rule"]
