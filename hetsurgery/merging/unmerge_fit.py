"""The unmerge layers of a partial zip, fitted by least squares on the calibration data.

Where the cut crosses a merged value ``z`` (``r`` channels), tail ``k`` reads it through an affine layer that
should give back what model ``k`` computed there, ``x_k`` (``d_k`` channels). The width plan's ``U_k`` is exact
for a permutation, a guess for zipped features: it copies each merged feature back to the features it averaged.
The best affine map in the least-squares sense, over every position of every calibration sample,

    A_k, c_k = argmin Σ ‖x_k − (A_k z + c_k)‖²,   [A_k c_k]ᵀ = pinv(Σ [z;1][z;1]ᵀ) Σ [z;1] x_kᵀ,

needs only the second moments of ``(z, 1)`` and their cross moments with ``x_k``, streamed in float64 in one pass
of the merged trunk and of every model up to the cut (the pseudo-inverse drops directions no sample spans:
dead channels). Where the plan's map is exact (``z`` a permutation of ``x_k``) the fit is that permutation again.

>>> import torch, hetsurgery as hs
>>> a, b = hs.zoo.mlp([16, 16]), hs.zoo.mlp([16, 16])
>>> x = torch.randn(256, 64)
>>> fitted = hs.merge([a, b], [x], method="zip", stop_at=1, progress=False).model
>>> sorted(n for n, _ in fitted.named_parameters() if ".unmerge_" in n)
['tails.0.unmerge_layers_1.bias', 'tails.0.unmerge_layers_1.weight', 'tails.1.unmerge_layers_1.bias', 'tails.1.unmerge_layers_1.weight']
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx

from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.ir.lowering import to_module


@dataclass(frozen=True)
class Unmerge:
    """One unmerge layer: its name in the partially zipped model, the model whose tail reads it, the node of the
    cut it carries back (the same name in the merged graph and in that model's) and that value's channel dim."""

    layer: str
    model: int
    node: str
    channel_dim: int


def fit_unmerges(partial: ModelGraph, unmerges: Sequence[Unmerge], merged: ModelGraph,
                 graphs: Sequence[ModelGraph], data: Iterable, *, device: torch.device | str | None = None
                 ) -> ModelGraph:
    """``partial`` with every unmerge layer's weight and bias the least-squares map from the merged value to model
    ``k``'s own, over ``data``."""
    if not unmerges:
        return partial
    nodes = sorted({u.node for u in unmerges})
    runs = [_values(to_module(merged, share=True), nodes)]
    runs += [_values(to_module(g, share=True), nodes) for g in graphs]
    if device is not None:
        runs = [r.to(device) for r in runs]
    moments: dict[Unmerge, tuple[torch.Tensor, torch.Tensor]] = {}
    names = input_names(runs[0])
    with torch.no_grad():
        for batch in data:
            x = model_input(batch, names).to(device)
            z = dict(zip(nodes, runs[0](*x), strict=True))
            own = [dict(zip(nodes, r(*x), strict=True)) for r in runs[1:]]
            for u in unmerges:
                zs, xs = _rows(z[u.node], u.channel_dim, bias=True), _rows(own[u.model][u.node], u.channel_dim)
                zz, zx = moments.get(u, (0, 0))  # type: ignore[assignment]
                moments[u] = (zz + zs.T @ zs, zx + zs.T @ xs)
    updates = {}
    for u, (zz, zx) in moments.items():
        solution = torch.linalg.pinv(zz, hermitian=True, rtol=1e-10) @ zx  # (r + 1) x d
        weight = partial.params[f"{u.layer}.weight"]
        updates[f"{u.layer}.weight"] = solution[:-1].T.reshape(weight.shape).to(weight)
        updates[f"{u.layer}.bias"] = solution[-1].to(weight)
    return partial.with_updates(updates)


def _values(gm: fx.GraphModule, nodes: Sequence[str]) -> fx.GraphModule:
    """``gm`` cut short: it returns the values of ``nodes``."""
    cut = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    named = {n.name: n for n in cut.graph.nodes}
    out = next(n for n in cut.graph.nodes if n.op == "output")
    out.args = (tuple(named[n] for n in nodes),)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut.eval()


def _rows(t: torch.Tensor, channel_dim: int, *, bias: bool = False) -> torch.Tensor:
    """Every position of ``t`` as a row of its channels (float64), with a column of ones for the bias."""
    rows = t.detach().movedim(channel_dim, -1).reshape(-1, t.shape[channel_dim]).double()
    return torch.cat([rows, rows.new_ones(len(rows), 1)], 1) if bias else rows
