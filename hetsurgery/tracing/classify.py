"""Classify an fx node into an ``OpKind``: by exact module class, function identity or method name.

Unknown modules, functions and methods are ``OpKind.UNKNOWN``: the rule for it freezes what it touches.
Module classes match exactly (a subclass may override ``forward``), except the few listed subclasses.
"""

from __future__ import annotations

import builtins
import dataclasses
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from hetsurgery.ir import Activation, OpKind

K = OpKind

MODULES: dict[type[nn.Module], OpKind] = {
    nn.Linear: K.LINEAR, NonDynamicallyQuantizableLinear: K.LINEAR,
    nn.Conv1d: K.CONV, nn.Conv2d: K.CONV, nn.Conv3d: K.CONV,
    nn.BatchNorm1d: K.BATCH_NORM, nn.BatchNorm2d: K.BATCH_NORM, nn.BatchNorm3d: K.BATCH_NORM,
    nn.LayerNorm: K.LAYER_NORM, nn.RMSNorm: K.LAYER_NORM,  # the same channel rule: normalise trailing dims
    nn.GroupNorm: K.GROUP_NORM, nn.Embedding: K.EMBEDDING,
    nn.MultiheadAttention: K.MULTIHEAD_ATTENTION,
    **dict.fromkeys([nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardswish,
                     nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                     nn.Identity], K.ELEMENTWISE),
    **dict.fromkeys([nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                     nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample],
                    K.SPATIAL),
    nn.Flatten: K.FLATTEN, nn.Softmax: K.SOFTMAX, nn.LogSoftmax: K.SOFTMAX,
}

FUNCTIONS: dict[object, OpKind] = {
    **dict.fromkeys([torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, torch.sigmoid, F.sigmoid, torch.tanh,
                     F.tanh, F.gelu, F.silu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.elu, F.mish,
                     F.hardtanh, F.dropout, F.dropout1d, F.dropout2d, torch.dropout, operator.neg,
                     torch.neg], K.ELEMENTWISE),
    **dict.fromkeys([F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate,
                     F.pad], K.SPATIAL),
    **dict.fromkeys([operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul,
                     torch.div, torch.true_divide, torch.maximum, torch.minimum, torch.pow], K.BINARY),
    torch.cat: K.CONCAT, torch.concat: K.CONCAT,
    **dict.fromkeys([torch.chunk, torch.split, torch.tensor_split, torch.unbind, torch.narrow], K.SPLIT),
    torch.roll: K.ROLL, torch.einsum: K.EINSUM, F.linear: K.FUNCTIONAL_LINEAR, F.normalize: K.NORMALIZE,
    torch.addmm: K.ADDMM, torch.repeat_interleave: K.REPEAT, torch.where: K.WHERE,
    **dict.fromkeys([F.layer_norm, F.rms_norm], K.LAYER_NORM),
    **dict.fromkeys([torch.max, torch.min, torch.argmax, torch.argmin], K.EXTREMUM),
    **dict.fromkeys([torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like], K.SHAPE),
    torch.flatten: K.FLATTEN, torch.reshape: K.RESHAPE,
    **dict.fromkeys([torch.transpose, torch.permute, torch.swapaxes, torch.t], K.TRANSPOSE),
    torch.unsqueeze: K.UNSQUEEZE, torch.squeeze: K.UNSQUEEZE,
    **dict.fromkeys([torch.mean, torch.sum, torch.amax, torch.amin], K.REDUCE),
    **dict.fromkeys([F.softmax, torch.softmax, F.log_softmax, torch.log_softmax], K.SOFTMAX),
    torch.matmul: K.MATMUL, operator.matmul: K.MATMUL, torch.bmm: K.MATMUL,
    F.scaled_dot_product_attention: K.ATTENTION,
    operator.getitem: K.GETITEM,
}

METHODS: dict[str, OpKind] = {
    **dict.fromkeys(["relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach",
                     "float", "to", "type_as", "neg"], K.ELEMENTWISE),
    **dict.fromkeys(["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow"], K.BINARY),
    "view": K.RESHAPE, "reshape": K.RESHAPE, "flatten": K.FLATTEN,
    **dict.fromkeys(["chunk", "split", "tensor_split", "unbind", "narrow"], K.SPLIT), "roll": K.ROLL,
    "repeat_interleave": K.REPEAT,
    **dict.fromkeys(["max", "min", "argmax", "argmin"], K.EXTREMUM),
    **dict.fromkeys(["transpose", "permute", "swapaxes", "swapdims", "t"], K.TRANSPOSE),
    **dict.fromkeys(["unsqueeze", "squeeze", "expand", "expand_as"], K.UNSQUEEZE),
    **dict.fromkeys(["mean", "sum", "amax", "amin"], K.REDUCE),
    "softmax": K.SOFTMAX, "log_softmax": K.SOFTMAX,
    "matmul": K.MATMUL, "bmm": K.MATMUL,
    "size": K.SHAPE, "dim": K.SHAPE, "numel": K.SHAPE,
    **dict.fromkeys(["new_zeros", "new_ones", "new_empty", "new_full"], K.SHAPE),  # only dtype and device are read
}

ATTRIBUTES: dict[str, OpKind] = {
    "T": K.TRANSPOSE, "mT": K.TRANSPOSE, "values": K.GETITEM, "indices": K.GETITEM,  # of torch.max's result
    **dict.fromkeys(["shape", "dtype", "device", "ndim", "is_cuda"], K.SHAPE),
}


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> OpKind:
    if node.op == "placeholder":
        return K.PLACEHOLDER
    if node.op == "output":
        return K.OUTPUT
    if node.op == "get_attr":
        return K.GET_ATTR
    if node.op == "call_module":
        return MODULES.get(type(modules[str(node.target)]), K.UNKNOWN)
    if node.op == "call_method":
        return METHODS.get(str(node.target), K.UNKNOWN)
    if node.target is builtins.getattr:
        return ATTRIBUTES.get(str(node.args[1]), K.UNKNOWN)
    if isinstance(node.target, type) and (dataclasses.is_dataclass(node.target) or _is_namedtuple(node.target)):
        return K.CONTAINER  # fx records building a dataclass (a ModelOutput) or a namedtuple as a call
    try:
        return FUNCTIONS.get(node.target, K.UNKNOWN)
    except TypeError:  # an unhashable target
        return K.UNKNOWN


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


A = Activation

ACTIVATION_MODULES: dict[type[nn.Module], Activation] = {
    nn.ReLU: A.RELU, nn.ReLU6: A.RELU6, nn.LeakyReLU: A.LEAKY_RELU, nn.ELU: A.ELU, nn.GELU: A.GELU, nn.SiLU: A.SILU,
    nn.Mish: A.MISH, nn.Sigmoid: A.SIGMOID, nn.Hardsigmoid: A.HARDSIGMOID, nn.Tanh: A.TANH,
    nn.Hardswish: A.HARDSWISH,
    **dict.fromkeys([nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity], A.IDENTITY),
}

ACTIVATION_FUNCTIONS: dict[object, Activation] = {
    **dict.fromkeys([torch.relu, torch.relu_, F.relu, F.relu_], A.RELU), F.relu6: A.RELU6,
    F.leaky_relu: A.LEAKY_RELU, F.elu: A.ELU, F.gelu: A.GELU, F.silu: A.SILU, F.mish: A.MISH,
    **dict.fromkeys([torch.sigmoid, F.sigmoid], A.SIGMOID), F.hardsigmoid: A.HARDSIGMOID,
    **dict.fromkeys([torch.tanh, F.tanh], A.TANH), F.hardswish: A.HARDSWISH,
    **dict.fromkeys([F.dropout, F.dropout1d, F.dropout2d, torch.dropout], A.IDENTITY),
    **dict.fromkeys([operator.neg, torch.neg], A.NEG),
}

ACTIVATION_METHODS: dict[str, Activation] = {
    "relu": A.RELU, "relu_": A.RELU, "sigmoid": A.SIGMOID, "sigmoid_": A.SIGMOID, "tanh": A.TANH, "tanh_": A.TANH,
    "neg": A.NEG, **dict.fromkeys(["contiguous", "clone", "detach", "float", "to", "type_as"], A.IDENTITY),
}


def activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    """Which channel-wise function an ``ELEMENTWISE`` node is (``None`` for any other node).

    ``nn.Hardtanh`` and ``F.hardtanh`` count as ``HARDTANH`` only with their default bounds ``[-1, 1]``.
    """
    if node.op == "call_module":
        mod = modules[str(node.target)]
        if type(mod) is nn.Hardtanh:
            return A.HARDTANH if (mod.min_val, mod.max_val) == (-1.0, 1.0) else None
        return ACTIVATION_MODULES.get(type(mod))
    if node.op == "call_method":
        return ACTIVATION_METHODS.get(str(node.target))
    if node.op != "call_function":
        return None
    if node.target is F.hardtanh:
        bounds = (node.args[1:3] or (node.kwargs.get("min_val", -1.0), node.kwargs.get("max_val", 1.0)))
        return A.HARDTANH if tuple(bounds) == (-1.0, 1.0) else None
    try:
        return ACTIVATION_FUNCTIONS.get(node.target)
    except TypeError:  # an unhashable target
        return None
