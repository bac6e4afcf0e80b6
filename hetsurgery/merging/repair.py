"""REPAIR inside ``merge`` (``repair=True``): the merged layers' output statistics set to the models' own.

``repair_targets`` carries every model into the merged channel space (its part of the width plan, each merged
channel model ``k``'s own mean of its features: ``MapGroups.carrying(..., normalised=True)``, what ``align``
returns), runs it over the calibration data and averages, with the merge's weights, the per-channel mean and
standard deviation of each repaired layer's output. ``RepairStatistics`` then sets the merged model's to those,
layer after layer in the order the layers depend on each other (``levels``). The repaired layers are the
Linear layers and convolutions (called as modules) whose outputs are channels the plan aligned, and the layer that
writes the model's output (its channels stay in place, averaged position by position, so each model's own output
statistics are its part of the target, with its merge weight). The output layer is repaired like the others
because a merged model's outputs are compared with each other: on the digits ViT pair (bench
``depth_transformer``, 3 seeds) the merged logits of one parent's classes came out smaller than the other's, and
repairing them took joint accuracy from 48.6 to 49.7 for the homogeneous zip and from 45.3 to 48.3 for the
depth 4 / 2 merge by CLA (one-off script on the bench's models before the change; the bench's rows are the
measurement).

This is for models whose statistics no BatchNorm reset recomputes (transformers, LayerNorm and RMSNorm
models); with BatchNorm the reset after it renormalises anyway. ``merge``'s default (``repair=None``) repairs
exactly those (``repair_wanted``): on the digits ViT pair (bench ``depth_transformer``) REPAIR took homogeneous
zip from 26 to 42 joint accuracy and permute from 20 to 33, because averaging shrinks the variance of the
attention logits and of the MLP's pre-activations and no LayerNorm inside a block undoes that. Plain averaging
(``method="average"``, the vanilla baseline of a loss barrier) is never repaired unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from hetsurgery.ir import MODEL_OUTPUT, ModelGraph, OpKind, Role, SlotMaps, slots_by_param
from hetsurgery.ir.slot_maps import Map
from hetsurgery.passes.repair_statistics import Moments, RepairStatistics, layer_covariances
from hetsurgery.plan.width_plan import GroupMatch, MatchKind, WidthPlan

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def repair(merged: ModelGraph, graphs: Sequence[ModelGraph], plan: WidthPlan, data: Iterable, *,
           max_samples: int | None = 512, device: torch.device | str | None = None) -> ModelGraph:
    """``merged`` with every repairable layer's output statistics set to the weighted mean of the models'."""
    layers = repair_layers(merged)
    if not layers:
        return merged
    targets = repair_targets(graphs, plan, layers, data, max_samples=max_samples, device=device)
    return RepairStatistics(targets, levels(merged, layers), data, max_samples, device)(merged)


def repair_wanted(graphs: Sequence[ModelGraph], method: str) -> bool:
    """``repair=None``: REPAIR when the models normalise over their channels (LayerNorm, RMSNorm) and have no
    BatchNorm, whose reset renormalises anyway, and the method aligned them (not plain averaging)."""
    from hetsurgery.merging.zip_plan import normalised_groups  # zip_plan imports the passes this module does

    if method == "average":
        return False
    g = graphs[0]
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.module.modules()):
        return False
    return bool(normalised_groups(g))


def repair_layers(g: ModelGraph) -> list[str]:
    """The Linear and convolution nodes (modules) whose outputs are aligned channels or the model's output, in
    graph order."""
    modules = dict(g.module.named_modules())
    out = []
    for node in g.module.graph.nodes:
        f = g.facts.get(node.name)
        if f is None or f.kind not in (OpKind.LINEAR, OpKind.CONV) or node.op != "call_module":
            continue
        if not isinstance(modules.get(str(node.target)), _LAYERS) or not f.writes:
            continue
        if all(g.group(gid).perm_ok or g.group(gid).frozen == MODEL_OUTPUT for gid in f.writes):
            out.append(node.name)
    return out


def levels(g: ModelGraph, layers: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """``layers`` in rounds: a layer comes one round after the last of the layers it depends on.

    >>> import torch, hetsurgery as hs
    >>> g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
    >>> levels(g, ["layers_0", "layers_2"])
    (('layers_0',), ('layers_2',))
    """
    wanted = set(layers)
    depth: dict[str, int] = {}
    rounds: dict[int, list[str]] = {}
    for node in g.module.graph.nodes:
        before = max((depth.get(a.name, 0) for a in node.all_input_nodes), default=0)
        if node.name in wanted:
            depth[node.name] = before + 1
            rounds.setdefault(before + 1, []).append(node.name)
        else:
            depth[node.name] = before
    return tuple(tuple(rounds[k]) for k in sorted(rounds))


def repair_targets(graphs: Sequence[ModelGraph], plan: WidthPlan, layers: Sequence[str], data: Iterable, *,
                   max_samples: int | None = 512, device: torch.device | str | None = None) -> dict[str, Moments]:
    """Per layer, the per-channel mean and standard deviation of its output carried into the merged channels,
    averaged over the models with the share the plan gives each in each merged channel (the row sums of its
    ``M_k``: its weight, or nothing where it takes no part). Each model runs once over the data; its layers'
    output means and covariances are carried by ``A_k``, its map alone (``alone``): ``A_k μ_k`` and
    ``sqrt(diag(A_k Σ_k A_kᵀ))``."""
    means: dict[str, torch.Tensor] = {}
    stds: dict[str, torch.Tensor] = {}
    mass: dict[str, torch.Tensor] = {}
    for k, g in enumerate(graphs):
        if plan.weights[k] == 0:
            continue
        maps = SlotMaps({gid: alone(m, k, plan.weights[k]) for gid, m in plan.groups.items()}, {})
        shares = SlotMaps({gid: m.produce_map(k) for gid, m in plan.groups.items()}, {})
        by_param = slots_by_param(g.groups)
        for name, (mean, cov) in layer_covariances(g, layers, data, max_samples, device).items():
            carry = _output_map(g, name, by_param, maps, mean.numel())
            if any(g.group(gid).frozen == MODEL_OUTPUT for gid in g.facts[name].writes):
                # the model's output, in place: each model's share is its weight
                share = torch.full((mean.numel(),), float(plan.weights[k]), dtype=torch.float64)
            else:
                share = _output_map(g, name, by_param, shares, mean.numel()).sum(1)
            means[name] = means.get(name, 0) + share * (carry @ mean)
            stds[name] = stds.get(name, 0) + share * torch.einsum("ij,jk,ik->i", carry, cov, carry).clamp_min(0).sqrt()
            mass[name] = mass.get(name, 0) + share
    return {name: (means[name] / mass[name].clamp_min(1e-12), stds[name] / mass[name].clamp_min(1e-12))
            for name in layers}


def alone(m: GroupMatch, k: int, weight: float) -> Map:
    """Model ``k``'s features in the merged channels, as if it were merged alone: its mean over each merged
    channel's members (``produce_map(normalised=True)``), and for a zipped stream its own part of the merged
    stream at full weight, ``M_k / w_k`` (the merged stream is the sum of the models' parts)."""
    if m.kind is MatchKind.STREAM:
        return m.merge[k] / weight
    return m.produce_map(k, normalised=True)


def _output_map(g: ModelGraph, node: str, by_param: dict, maps: SlotMaps, width: int) -> torch.Tensor:
    """``merged outputs x width``: how the plan carries the layer's output channels (its weight's produce slots)."""
    target = str(next(n for n in g.module.graph.nodes if n.name == node).target)
    slots = [(gid, s) for gid, s in by_param.get(f"{target}.weight", []) if s.role is Role.PRODUCE and s.dim == 0]
    return maps.transform(torch.eye(width, dtype=torch.float64), slots).double()
