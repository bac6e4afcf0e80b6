"""Partial zipping (ZipIt!'s "zip up to a layer"): the models merged up to a cut, each model's own tail after it.

``merge(..., stop_at=...)`` merges the *trunk*, the first units (the depth-balanced anchor's order) with everything
they read, and keeps each model's *tail*, the rest, with its own weights. Where a value crosses the cut, tail
``k`` reads it carried back into model ``k``'s channels by an affine layer named ``tails.<k>.unmerge_<node>`` (a
1x1 convolution, or a Linear for channels-last values): the width plan's unmerge ``U_k`` (``d_k x r``), then,
with calibration data, the least-squares fit of model ``k``'s own values from the merged ones
(``merging.unmerge_fit``). Where ``U_k`` is the identity (a frozen group such as the logits) there is no layer.
The layer is explicit rather than folded into the tail's first layers: a residual stream carries the value on
past them. The models' outputs are then combined as the ensemble combines them, ``Σ_k w_k y_k`` with the merge
weights (the mean of logits for two models, ``heads="combined"``), or returned one per model
(``heads="separate"``, a tuple).

* ``stop_at`` is the number of units merged (``0``: nothing, the ensemble; ``len(units)``: the full merge), the
  key of the last merged unit, or a stage key (the trunk ends after the stage).
* The trunk's weights and BatchNorm statistics are the full merge's (statistics depend only on what comes before,
  so they are the trunk's own). The tails read merged values now, so their BatchNorm statistics are recomputed as
  the trunk's were (``reset_bn``). Units that depth balancing inserted into a tail (identity layers, zero-residual
  blocks) compute the identity there and are left out.
* Hence the two ends are exact: cut before the first unit the model is the output ensemble (nothing is merged,
  fitted or reset), after the last the full merge (``tests/test_partial_zip.py``).

>>> import torch, hetsurgery as hs
>>> a, b = hs.zoo.mlp([16, 16]), hs.zoo.mlp([16, 16])
>>> r = hs.merge([a, b], [torch.randn(64, 64)], method="zip", stop_at=1, progress=False)
>>> print(r.report.partial)
partial zip: 1 of 3 units merged (up to layers_0), tails of 2 models, heads combined; parameters: trunk 1,040, tails 884, unmerge 544
"""

from __future__ import annotations

import copy
import enum
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import fx, nn
from torch.fx.node import Argument

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module
from hetsurgery.merging.inserted import inserted_units
from hetsurgery.merging.unmerge_fit import Unmerge, fit_unmerges
from hetsurgery.passes import ResetBatchNorm, check_same_function
from hetsurgery.plan.depth import DepthPlan
from hetsurgery.plan.width_plan import WidthPlan
from hetsurgery.tracing import lift_graph


class Heads(enum.Enum):
    """What a partially zipped model returns."""

    COMBINED = "combined"  # Σ_k w_k y_k: the ensemble's mean of logits
    SEPARATE = "separate"  # (y_0, y_1, ...): each model's head


@dataclass(frozen=True)
class PartialOptions:
    """Where to cut (``stop_at``: a unit count, a unit key or a stage key) and what to return (``heads``)."""

    stop_at: int | str
    heads: Heads = Heads.COMBINED

    @staticmethod
    def of(stop_at: int | str | None, heads: str = "combined") -> PartialOptions | None:
        """The options as ``merge``'s keywords give them (``None``: merge everything), checked."""
        if heads not in [h.value for h in Heads]:
            raise MergeInputError(f"heads must be 'combined' or 'separate', not {heads!r}")
        if stop_at is None:
            if heads != Heads.COMBINED.value:
                raise MergeInputError("heads='separate' needs stop_at= (a full merge has one head)")
            return None
        if isinstance(stop_at, bool) or not isinstance(stop_at, (int, str)) or (isinstance(stop_at, int)
                                                                               and stop_at < 0):
            raise MergeInputError(f"stop_at must be a number of units (0, 1, ...), a unit key or a stage key, not "
                                  f"{stop_at!r}")
        return PartialOptions(stop_at, Heads(heads))

    def units_merged(self, g: ModelGraph) -> int:
        """How many of ``g``'s units (the balanced anchor's) the trunk holds; ``MergeInputError`` for a cut ``g``
        does not have."""
        keys = [u.key for u in g.units]
        if isinstance(self.stop_at, int):
            if self.stop_at > len(keys):
                raise MergeInputError(f"stop_at={self.stop_at}: the models have {len(keys)} units after depth "
                                      f"balancing (0 merges none, {len(keys)} all)")
            return self.stop_at
        if self.stop_at in keys:
            return keys.index(self.stop_at) + 1
        stages = {st.key: st for st in g.stages}
        if self.stop_at in stages:
            return keys.index(stages[self.stop_at].units[-1]) + 1
        raise MergeInputError(f"stop_at={self.stop_at!r} is no unit or stage of {g.name}: its units are "
                              f"{', '.join(keys)}; its stages {', '.join(stages) or 'none'} (or give a number)")


@dataclass(frozen=True)
class PartialReport:
    """Where the models were cut and what the partially zipped model holds (parameter counts)."""

    units: int
    of: int
    last: str | None
    models: int
    heads: Heads
    trunk: int
    tails: int
    unmerge: int

    @property
    def parameters(self) -> int:
        return self.trunk + self.tails + self.unmerge

    def __str__(self) -> str:
        upto = f" (up to {self.last})" if self.last else ""
        return (f"partial zip: {self.units} of {self.of} units merged{upto}, tails of {self.models} models, heads "
                f"{self.heads.value}; parameters: trunk {self.trunk:,}, tails {self.tails:,}, unmerge {self.unmerge:,}")


def partial_zip(merged: ModelGraph, graphs: Sequence[ModelGraph], plan: WidthPlan, depth: DepthPlan | None,
                opts: PartialOptions, data: Iterable | None = None, *, reset_bn: int | None = None,
                device: torch.device | str | None = None) -> tuple[ModelGraph, PartialReport]:
    """The trunk of ``merged`` (the full merge of the balanced ``graphs`` by ``plan``) and every model's tail; with
    ``data`` the unmerge layers fitted on it, and with ``reset_bn`` the tails' BatchNorm statistics recomputed on its
    first ``reset_bn`` samples."""
    count = opts.units_merged(merged)
    trunk = _trunk(merged, count)
    graph, layers = fx.Graph(), dict[str, object]()
    env: dict[str, fx.Node] = {}
    source = to_module(merged, share=True)
    for node in source.graph.nodes:
        if node.op == "placeholder" or node.name in trunk:
            env[node.name] = _copy(graph, node, env, source, "", layers)
    crossing = [n for n in source.graph.nodes if n.name in trunk and n.op not in ("placeholder", "get_attr")
                and any(u.name not in trunk for u in n.users)]
    outputs, unmerges = [], list[Unmerge]()
    for k, g in enumerate(graphs):
        own = {name: node for name, node in env.items() if node.op != "get_attr"}  # tails read their own tensors
        for node in crossing:
            own[node.name] = _carried_back(graph, env[node.name], merged, g, node.name, plan, k, layers, unmerges)
        outputs.append(_tail(graph, g, inserted_units(depth, k), own, f"tails.{k}", layers))
    graph.output(_heads(graph, outputs, plan.weights, opts.heads, merged.name))
    graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output"))  # a trunk tensor that no tail reads, say
    used = {str(n.target) for n in graph.nodes if n.op in ("call_module", "get_attr")}
    gm = fx.GraphModule({t: v for t, v in layers.items() if t in used}, graph)
    out = replace(lift_graph(gm, merged.example_inputs, merged.name), passes=merged.passes)
    if count == len(merged.units) and opts.heads is Heads.COMBINED:
        check_same_function(merged, out)  # after the last unit the tails are the heads' identity
    if data is not None:
        out = fit_unmerges(out, unmerges, merged, graphs, data, device=device)
        if reset_bn and 0 < count < len(merged.units):  # the tails now read merged values (the trunk: as before)
            out = ResetBatchNorm(data, max_samples=reset_bn, device=device)(out)
    sizes = {name: t.numel() for name, t in out.params.items() if t.is_floating_point()}
    tails = sum(n for name, n in sizes.items() if name.startswith("tails."))
    unmerge = sum(n for name, n in sizes.items() if name.startswith("tails.") and ".unmerge_" in name)
    report = PartialReport(count, len(merged.units), merged.units[count - 1].key if count else None, len(graphs),
                           opts.heads, sum(sizes.values()) - tails, tails - unmerge, unmerge)
    return out, report


def _trunk(g: ModelGraph, count: int) -> set[str]:
    """The nodes of ``g``'s first ``count`` units and every node they read."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    todo = [nodes[name] for u in g.units[:count] for name in u.nodes]
    seen: set[str] = set()
    while todo:
        node = todo.pop()
        if node.name not in seen:
            seen.add(node.name)
            todo += node.all_input_nodes
    return seen


def _tail(graph: fx.Graph, g: ModelGraph, inserted: frozenset[str], env: dict[str, fx.Node], prefix: str,
          layers: dict[str, object]) -> Argument:
    """Model ``g``'s nodes after the cut copied into ``graph`` (its layers under ``prefix``), reading ``env``,
    without the units in ``inserted``; returns what its output node returns."""
    source = to_module(g, share=True)
    skipped = {u.exit: u for u in g.units if u.key in inserted}
    inside = {n for u in skipped.values() for n in u.nodes}
    result: Argument = None
    for node in source.graph.nodes:
        if node.name in env:
            continue
        if node.op == "output":
            result = fx.map_arg(node.args[0], lambda n: env[n.name])
        elif node.name in skipped:  # an inserted unit's output is its input
            env[node.name] = env[skipped[node.name].entry]
        elif node.name not in inside:
            env[node.name] = _copy(graph, node, env, source, prefix, layers)
    return result


def _copy(graph: fx.Graph, node: fx.Node, env: dict[str, fx.Node], source: nn.Module, prefix: str,
          layers: dict[str, object]) -> fx.Node:
    """``node`` of ``source``'s graph copied into ``graph`` reading ``env``; a layer or tensor it names is copied
    into ``layers`` under ``prefix`` (the new model owns it)."""
    new = graph.node_copy(node, lambda n: env[n.name])
    new.meta = {}
    if node.op in ("call_module", "get_attr"):
        target = f"{prefix}.{node.target}" if prefix else str(node.target)
        new.target = target
        layers[target] = copy.deepcopy(_attr(source, str(node.target)))
    return new


def _carried_back(graph: fx.Graph, value: fx.Node, merged: ModelGraph, g: ModelGraph, name: str, plan: WidthPlan,
                  k: int, layers: dict[str, object], unmerges: list[Unmerge]) -> fx.Node:
    """``value`` (a merged trunk value) in model ``k``'s channels: ``U_k`` along its channel dim (a layer recorded
    in ``unmerges``), or ``value`` itself when the plan leaves model ``k``'s channels as they are there."""
    facts, own = merged.facts[name], g.facts[name]
    if not facts.writes or own.channel_dim is None or facts.shape is None:
        return value
    if len(facts.writes) > 1:
        raise MergeInputError(f"stop_at: the cut crosses node {name}, which concatenates {len(facts.writes)} groups; "
                              "cut before or after the concatenation")
    match = plan.groups.get(facts.writes[0])
    if match is None:
        return value
    u = match.unmerge[k].to(torch.float32)
    if u.shape[0] == u.shape[1] and torch.equal(u, torch.eye(u.shape[0])):
        return value
    target = f"tails.{k}.unmerge_{name}"
    layers[target] = _unmerge_layer(u, len(facts.shape), own.channel_dim, name)
    unmerges.append(Unmerge(target, k, name, own.channel_dim))
    return graph.call_module(target, (value,))


def _unmerge_layer(u: torch.Tensor, ndim: int, channel_dim: int, name: str) -> nn.Module:
    """A layer computing ``U`` along ``channel_dim`` (a 1x1 convolution, or a Linear for channels-last), its bias 0
    (``fit_unmerges`` may set both)."""
    d, r = u.shape
    layer: nn.Linear | nn.modules.conv._ConvNd
    if channel_dim == ndim - 1:
        layer = nn.Linear(r, d)
        weight = u
    elif channel_dim == 1 and 3 <= ndim <= 5:
        layer = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[ndim](r, d, 1)
        weight = u.reshape(d, r, *([1] * (ndim - 2)))
    else:
        raise MergeInputError(f"stop_at: the cut crosses node {name}, whose channels are dim {channel_dim} of "
                              f"{ndim}; no layer carries them back into each model's channels: cut elsewhere")
    with torch.no_grad():
        layer.weight.copy_(weight)
        assert layer.bias is not None
        layer.bias.zero_()
    return layer


def _heads(graph: fx.Graph, outputs: list[Argument], weights: Sequence[float], heads: Heads, name: str
           ) -> Argument:
    if heads is Heads.SEPARATE:
        return tuple(outputs)
    nodes = [o for o in outputs if isinstance(o, fx.Node)]
    if len(nodes) != len(outputs):
        raise MergeInputError(f"{name} returns a container, not one tensor: the heads of a partial zip cannot be "
                              "combined; use heads='separate'")
    total: fx.Node | None = None
    for out, w in zip(nodes, weights, strict=True):
        term = graph.call_function(operator.mul, (out, float(w)))
        total = term if total is None else graph.call_function(operator.add, (total, term))
    return total


def _attr(module: nn.Module, path: str) -> object:
    value: object = module
    for part in path.split("."):
        value = getattr(value, part)
    return value
