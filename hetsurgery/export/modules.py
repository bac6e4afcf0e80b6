"""The ``torch.nn`` layers a saved ``model.py`` can rebuild, and how to read their constructor arguments.

A layer is rebuilt from its class name and the arguments that differ from the constructor's defaults,
read back from the instance's attributes (``Conv2d`` keeps ``stride``, ``groups``, ... under the names of
its arguments). Only the exact classes of the table are rebuilt: a subclass may have its own ``forward``.

>>> from torch import nn
>>> constructor_args(nn.Conv2d(1, 16, 3, padding=1, bias=False), "stem")
('Conv2d', {'in_channels': 1, 'out_channels': 16, 'kernel_size': (3, 3), 'padding': (1, 1), 'bias': False})
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hetsurgery.errors import ExportError

_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
         "padding_mode")
_CONV_T = (*_CONV, "output_padding")
_BATCH_NORM = ("num_features", "eps", "momentum", "affine", "track_running_stats", "bias")
_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_INPLACE = ("inplace",)
_DROPOUT = ("p", "inplace")

ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features", "bias"),
    nn.Bilinear: ("in1_features", "in2_features", "out_features", "bias"),
    nn.Conv1d: _CONV, nn.Conv2d: _CONV, nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _CONV_T, nn.ConvTranspose2d: _CONV_T, nn.ConvTranspose3d: _CONV_T,
    nn.BatchNorm1d: _BATCH_NORM, nn.BatchNorm2d: _BATCH_NORM, nn.BatchNorm3d: _BATCH_NORM,
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine", "bias"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine", "bias"),
    nn.RMSNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.Embedding: ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                   "scale_grad_by_freq", "sparse"),
    nn.MultiheadAttention: ("embed_dim", "num_heads", "dropout", "bias", "add_bias_kv", "add_zero_attn",
                            "kdim", "vdim", "batch_first"),
    nn.ReLU: _INPLACE, nn.ReLU6: _INPLACE, nn.SiLU: _INPLACE, nn.Hardswish: _INPLACE,
    nn.Hardsigmoid: _INPLACE, nn.Mish: _INPLACE, nn.GELU: ("approximate",), nn.Sigmoid: (), nn.Tanh: (),
    nn.LeakyReLU: ("negative_slope", "inplace"), nn.ELU: ("alpha", "inplace"), nn.PReLU: ("num_parameters",),
    nn.Softplus: ("beta", "threshold"), nn.Softmax: ("dim",), nn.LogSoftmax: ("dim",),
    nn.MaxPool1d: _MAX_POOL, nn.MaxPool2d: _MAX_POOL, nn.MaxPool3d: _MAX_POOL,
    nn.AvgPool1d: _AVG_POOL[:-1], nn.AvgPool2d: _AVG_POOL, nn.AvgPool3d: _AVG_POOL,
    nn.AdaptiveAvgPool1d: ("output_size",), nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveAvgPool3d: ("output_size",), nn.AdaptiveMaxPool1d: ("output_size", "return_indices"),
    nn.AdaptiveMaxPool2d: ("output_size", "return_indices"), nn.AdaptiveMaxPool3d: ("output_size", "return_indices"),
    nn.Upsample: ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
    nn.Flatten: ("start_dim", "end_dim"), nn.Unflatten: ("dim", "unflattened_size"),
    nn.Dropout: _DROPOUT, nn.Dropout1d: _DROPOUT, nn.Dropout2d: _DROPOUT, nn.Dropout3d: _DROPOUT,
    nn.Identity: (),
}

# arguments that are not stored under their own name
_DERIVED: dict[tuple[type[nn.Module], str], Callable[[Any], object]] = {
    (nn.MultiheadAttention, "bias"): lambda m: m.in_proj_bias is not None,
    (nn.MultiheadAttention, "add_bias_kv"): lambda m: m.bias_k is not None,
}


def constructor_args(module: nn.Module, name: str) -> tuple[str, dict[str, Any]]:
    """``(class name, arguments)`` that rebuild ``module``; ``ExportError`` for a class outside the table."""
    cls = type(module)
    if cls not in ARGS:
        raise ExportError(
            f"layer {name!r} is a {cls.__module__}.{cls.__qualname__}, which a saved model.py cannot rebuild "
            f"(it knows {len(ARGS)} torch.nn layers: Linear, Conv, BatchNorm, LayerNorm, GroupNorm, Embedding, "
            "MultiheadAttention, activations, pooling, Flatten, Dropout, Identity, ...). Trace the model without "
            "keeping this module as a leaf so that its operations are recorded in the graph.")
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    for arg in ARGS[cls]:
        if arg not in params:  # an argument this torch version does not have
            continue
        value = _plain(_read(module, cls, arg))
        default = params[arg].default
        if default is inspect.Parameter.empty or not _same(value, default):
            kwargs[arg] = value
    _check_literal(kwargs, name)
    return cls.__name__, kwargs


def _read(module: nn.Module, cls: type[nn.Module], arg: str) -> object:
    derived = _DERIVED.get((cls, arg))
    if derived is not None:
        return derived(module)
    value = getattr(module, arg)
    if arg == "bias" and (value is None or isinstance(value, torch.Tensor)):
        return value is not None
    return value


def _plain(value: object) -> object:
    """Python literals only: tuples and lists of ints become tuples, ``torch.Size`` a tuple."""
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value


def _same(value: object, default: object) -> bool:
    if isinstance(value, tuple) and isinstance(default, int) and not isinstance(default, bool):
        return all(v == default for v in value)  # stride=(1, 1) is the default stride=1
    return type(value) is type(default) and value == default


def _check_literal(kwargs: dict[str, Any], name: str) -> None:
    text = repr(kwargs)
    try:
        ok = ast.literal_eval(text) == kwargs
    except (ValueError, SyntaxError):
        ok = False
    if not ok:
        raise ExportError(f"layer {name!r}: its constructor arguments {text} are not plain Python literals, "
                          "so model.py cannot write them down")
