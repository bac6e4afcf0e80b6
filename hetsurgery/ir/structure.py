"""A structural copy of a ``GraphModule`` holding given tensors, its layers' settings made to fit their shapes.

``ModelGraph`` keeps its module in step with its values through it (``with_updates``), and lowering hands users
a module built by it (``to_module``). It never runs the module: shapes are read from the tensors.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=3), torch.randn(2, 4))
>>> wider = {**g.params, "layers.0.weight": torch.zeros(12, 4), "layers.0.bias": torch.zeros(12),
...          "layers.2.weight": torch.zeros(3, 12)}
>>> with_tensors(g.module, wider, share=True).get_submodule("layers.0")
Linear(in_features=4, out_features=12, bias=True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import fx, nn


def owner_of(root: nn.Module, path: str, *, make: bool = False) -> tuple[nn.Module, str]:
    """The module holding the attribute at dotted ``path`` and the attribute's name; with ``make`` the empty
    container modules on the way are created (``AttributeError`` for a missing one otherwise).

    >>> owner_of(nn.Sequential(nn.Linear(2, 2)), "0.weight")
    (Linear(in_features=2, out_features=2, bias=True), 'weight')
    """
    *parts, leaf = path.split(".")
    owner = root
    for part in parts:
        child = getattr(owner, part, None)
        if child is None and make:
            child = nn.Module()
            owner.add_module(part, child)
        if not isinstance(child, nn.Module):
            raise AttributeError(f"{path!r}: {part!r} is not a module of {type(owner).__name__}")
        owner = child
    return owner, leaf


def attribute_at(root: nn.Module, path: str) -> object:
    """The attribute at dotted ``path`` (a tensor, a module, a value), or ``None`` when there is none."""
    try:
        owner, leaf = owner_of(root, path)
    except AttributeError:
        return None
    return getattr(owner, leaf, None)


def with_tensors(module: fx.GraphModule, tensors: Mapping[str, torch.Tensor], *, share: bool) -> fx.GraphModule:
    """A structural copy of ``module`` (new submodules, a new graph) holding ``tensors`` under their names
    (shared, or cloned unless ``share``); layers whose tensors changed shape are resynchronised."""
    old = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    memo: dict[int, object] = {}
    for name, tensor in old.items():
        new = tensors[name].detach() if share else tensors[name].detach().clone()
        memo[id(tensor)] = nn.Parameter(new, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, nn.Parameter) else new
    gm = copy.deepcopy(module, memo)
    for mod in gm.modules():
        for klass, fix in _RESYNC.items():
            if isinstance(mod, klass):
                fix(mod)
    return gm


def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _conv(m: nn.modules.conv._ConvNd) -> None:
    out = m.weight.shape[0]
    if m.groups == m.in_channels and m.groups > 1:  # depthwise: the groups follow the width
        multiplier = m.out_channels // m.in_channels
        m.in_channels = m.groups = out // multiplier
    else:
        m.in_channels = m.weight.shape[1] * m.groups
    m.out_channels = out


def _batch_norm(m: nn.modules.batchnorm._NormBase) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    if ref is not None:
        m.num_features = ref.shape[0]


def _layer_norm(m: nn.LayerNorm | nn.RMSNorm) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


def _embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


_RESYNC: dict[type, Callable] = {
    nn.Linear: _linear,
    nn.modules.conv._ConvNd: _conv,
    nn.modules.batchnorm._NormBase: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.RMSNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.Embedding: _embedding,
}
