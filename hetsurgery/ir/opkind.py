"""The closed vocabulary of operations the channel rules know.

Every fx node is classified into exactly one ``OpKind`` (by module class or fx target, never by
matching names); ``hetsurgery.tracing.rules.RULES`` maps every member to its channel rule, and a
test checks that the table is total.
"""

from __future__ import annotations

import enum


class OpKind(enum.Enum):
    PLACEHOLDER = "placeholder"  # a model input
    OUTPUT = "output"  # the model output
    GET_ATTR = "get_attr"  # a parameter, buffer or constant read from the module
    LINEAR = "linear"  # nn.Linear
    FUNCTIONAL_LINEAR = "functional_linear"  # F.linear with the weight passed in
    ADDMM = "addmm"  # torch.addmm(bias, x, W): x @ W + bias (GPT-2's Conv1D)
    CONV = "conv"  # nn.Conv1d/2d/3d, any ``groups``
    BATCH_NORM = "batch_norm"  # nn.BatchNorm1d/2d/3d
    LAYER_NORM = "layer_norm"  # nn.LayerNorm, nn.RMSNorm, F.layer_norm, F.rms_norm
    GROUP_NORM = "group_norm"  # nn.GroupNorm
    EMBEDDING = "embedding"  # nn.Embedding
    MULTIHEAD_ATTENTION = "multihead_attention"  # nn.MultiheadAttention
    ELEMENTWISE = "elementwise"  # activations, dropout, identity, casts: channel-wise, finite at 0
    SPATIAL = "spatial"  # pooling and resizing over the dims after the channel dim
    BINARY = "binary"  # add/sub/mul/div/max/min of tensors, with broadcasting
    WHERE = "where"  # torch.where(cond, a, b): a or b, element by element, chosen by a mask
    CONCAT = "concat"  # torch.cat
    SPLIT = "split"  # chunk / split / tensor_split / unbind / narrow
    ROLL = "roll"  # torch.roll: a cyclic shift along dims
    REPEAT = "repeat"  # repeat_interleave: each index repeated in a row (grouped-query attention's key heads)
    FLATTEN = "flatten"  # nn.Flatten, torch.flatten, Tensor.flatten
    RESHAPE = "reshape"  # view / reshape
    TRANSPOSE = "transpose"  # transpose / permute / swapaxes
    UNSQUEEZE = "unsqueeze"  # unsqueeze / squeeze
    REDUCE = "reduce"  # mean / sum / amax / amin over dims
    EXTREMUM = "extremum"  # max / min (of two tensors, over all, or along a dim with indices), argmax / argmin
    SOFTMAX = "softmax"  # softmax / log_softmax along a dim
    NORMALIZE = "normalize"  # F.normalize: divide by a p-norm along a dim
    MATMUL = "matmul"  # matmul / @ / bmm
    EINSUM = "einsum"  # torch.einsum
    ATTENTION = "attention"  # F.scaled_dot_product_attention
    GETITEM = "getitem"  # indexing of tensors, tuples and shapes
    CONTAINER = "container"  # a dataclass (a ModelOutput) or namedtuple built from values: a tuple of them
    SHAPE = "shape"  # x.size(), x.shape, x.dim(): reads sizes
    UNKNOWN = "unknown"  # anything else: freezes every group it touches
