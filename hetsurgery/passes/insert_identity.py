"""``InsertIdentity``: new layer units that compute the identity, inserted into a layer stage (CLAFusion's
"add layers").

The new unit copies the structure of its stage neighbour: Linear = I, or Conv = a centre-tap Dirac kernel
of the neighbour's kernel size (depthwise and grouped too), then BatchNorm if the neighbour has one (with
running mean 0 and variance 1, scaled by ``√(1 + eps)`` so that it is exactly the identity), then the
neighbour's activation. That is the identity where the activation is the identity on the values it gets:
after a ReLU the features are non-negative, so ``ReLU(I·x) = x``. Anywhere else the pass refuses with the
node and the reason (a GELU is never the identity; before a stage's first layer the input may be negative).

Before (``mlp([8, 8])``, stage ``flatten``: units ``layers_0``, ``layers_2``)::

    flatten -> layers_0 -> layers_1 (ReLU) -> layers_2 -> layers_3 (ReLU) -> layers_4

After ``InsertIdentity("flatten", (1,))``::

    flatten -> layers_0 -> layers_1 -> layers_5 (Linear = I) -> layers_6 (ReLU) -> layers_2 -> ...
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import fx, nn

from hetsurgery.errors import PassError
from hetsurgery.ir import Activation, ModelGraph, NodeFacts, OpKind, Stage, Unit, UnitKind
from hetsurgery.passes.base import Recorded, refusal
from hetsurgery.passes.edit import CONVS, ORIGIN_META, add_module, editable, new_names, node_named, relift
from hetsurgery.passes.insertion import counted_positions, insertion_point, refuse_before_fixed


@dataclass(frozen=True)
class InsertIdentity(Recorded):
    """Insert units computing the identity into layer stage ``stage`` before the units at ``positions``
    (``len(stage)`` appends after the last unit; a position given twice inserts two units)."""

    stage: str
    positions: tuple[int, ...]
    name: ClassVar[str] = "insert-identity"
    exact: ClassVar[bool] = True

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        gm = editable(g)
        self.edit(g, gm)
        return relift(gm, g)

    def edit(self, g: ModelGraph, gm: fx.GraphModule) -> None:
        """Insert the units into ``gm``, an editable copy of ``g``'s module that may already hold other passes'
        edits of other stages (``Pipeline`` lifts once after them all)."""
        for n, point, template in self._plans(g):
            at = node_named(gm, point)
            for _ in range(n):  # one after the other, so that their names count up in order
                at = _insert_after(gm, g, at, g.facts[point], template)

    def footprint(self, g: ModelGraph) -> tuple[set[str], set[str]]:
        """The nodes whose readers the new units take over, and the nodes the copies are made from (their
        templates and what the templates read)."""
        plans = self._plans(g)
        nodes = {n.name: n for n in g.module.graph.nodes}
        read = {a.name for _, point, template in plans for k in template.nodes for a in nodes[k].all_input_nodes}
        return {point for _, point, template in plans}, read | {k for _, point, template in plans for k in template.nodes}

    def why_not(self, g: ModelGraph) -> str | None:
        """Why the pass would refuse ``g`` (``None``: it applies), asked without building anything."""
        return refusal(lambda: self._plans(g))

    def _plans(self, g: ModelGraph) -> list[tuple[int, str, Unit]]:
        """Per position, how many units go there, the node they read and the unit they copy; ``PassError``."""
        st = g.stage(self.stage)
        if st.kind is not UnitKind.LAYER:
            raise PassError(f"{g.name}: stage {st.key} is a stage of residual blocks; insert blocks with "
                            "InsertZeroResidual")
        units = [g.unit(k) for k in st.units]
        return [(n, *_point_and_template(g, st, units, p)) for p, n in counted_positions(g, st, self.positions)]

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        return {"pass": self.name, "stage": self.stage, "positions": list(self.positions)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The pass ``spec()`` describes."""
        return cls(str(spec["stage"]), tuple(int(p) for p in spec["positions"]))


def _point_and_template(g: ModelGraph, st: Stage, units: list[Unit], p: int) -> tuple[str, Unit]:
    """Where the new unit goes and which neighbour it copies; ``PassError`` when it cannot be the identity."""
    point = insertion_point(g, st, p)
    template = units[p - 1] if p > 0 else units[0]
    facts = g.facts[point]
    act = _activation(g, template)
    where = f"{g.name}: cannot insert an identity layer at position {p} of stage {st.key} (after node {point})"
    refuse_before_fixed(where, units, p)
    norm = next((n for n in template.nodes if g.facts[n].kind in (OpKind.LAYER_NORM, OpKind.GROUP_NORM)), None)
    if norm is not None:
        raise PassError(f"{where}: the stage's units normalise every sample ({g.facts[norm].kind.value} {norm}), "
                        "which no identity unit can do: an identity layer cannot be inserted here")
    if act is not None and not act.identity_on(facts.range):
        raise PassError(f"{where}: the stage's activation {act.value} is not the identity on the values there "
                        f"(they lie in {facts.range}); identity layers go after a ReLU-like activation")
    layer = g.module.get_submodule(str(_node(g, template.key).target))
    if isinstance(layer, nn.modules.conv._ConvNd) and (facts.channel_dim != 1 or facts.shape is None):
        raise PassError(f"{where}: the value there is not a channels-first feature map")
    if isinstance(layer, nn.Linear) and (facts.shape is None or facts.channel_dim != len(facts.shape) - 1):
        raise PassError(f"{where}: the value there does not carry channels in its last dim")
    return point, template


def _node(g: ModelGraph, name: str) -> fx.Node:
    return next(n for n in g.module.graph.nodes if n.name == name)


def _activation(g: ModelGraph, u: Unit) -> Activation | None:
    return next((a for n in u.nodes if (a := g.facts[n].activation) not in (None, Activation.IDENTITY)), None)


def _insert_after(gm: fx.GraphModule, g: ModelGraph, point: fx.Node, facts: NodeFacts, template: Unit) -> fx.Node:
    """One identity unit shaped like ``template`` reading ``point`` (whose values ``facts`` describes); every former
    reader of ``point`` reads it. Returns its output node."""
    assert facts.shape is not None and facts.channel_dim is not None
    width = facts.shape[facts.channel_dim]
    kept = [n for n in template.nodes if g.facts[n].kind in (OpKind.LINEAR, OpKind.CONV, OpKind.BATCH_NORM)
            or g.facts[n].activation not in (None, Activation.IDENTITY)]
    olds = [node_named(gm, n) for n in kept]
    names = new_names(gm, [str(n.target) for n in olds if n.op == "call_module"])
    users = list(point.users)
    last = point
    made: list[fx.Node] = []
    for old in olds:
        with gm.graph.inserting_after(last):
            if old.op == "call_module":
                mod = _identity_like(gm.get_submodule(str(old.target)), width)
                add_module(gm, names[str(old.target)], mod)
                new = gm.graph.call_module(names[str(old.target)], (last,), {})
            else:  # a functional activation: the same call on the new input
                new = _same_call(gm, old, last)
        new.meta[ORIGIN_META] = InsertIdentity.name
        made.append(new)
        last = new
    _fold_batch_norm_scale(gm, made)
    for user in users:
        user.replace_input_with(point, last)
    return last


def _same_call(gm: fx.GraphModule, old: fx.Node, reading: fx.Node) -> fx.Node:
    """A copy of the call ``old`` that reads ``reading`` instead of its first input."""
    source = old.args[0]
    return gm.graph.node_copy(old, lambda n: reading if n is source else n)


def _identity_like(mod: nn.Module, width: int) -> nn.Module:
    """A layer of ``mod``'s kind and settings, ``width`` channels in and out, computing the identity."""
    if isinstance(mod, nn.Linear):
        linear = nn.Linear(width, width, bias=mod.bias is not None, dtype=mod.weight.dtype, device=mod.weight.device)
        with torch.no_grad():
            linear.weight.copy_(torch.eye(width))
            if linear.bias is not None:
                linear.bias.zero_()
        return linear
    if type(mod) in CONVS.values():
        assert isinstance(mod, nn.modules.conv._ConvNd)
        depthwise = 1 < mod.groups == mod.in_channels
        groups = width if depthwise else (mod.groups if width % mod.groups == 0 else 1)
        kernel = tuple(k if k % 2 else 1 for k in mod.kernel_size)  # an even kernel has no centre tap
        make: Callable[..., nn.Conv1d | nn.Conv2d | nn.Conv3d] = CONVS[len(kernel)]
        conv = make(width, width, kernel, stride=1, padding=tuple(k // 2 for k in kernel), groups=groups,
                    bias=mod.bias is not None, padding_mode=mod.padding_mode, dtype=mod.weight.dtype,
                    device=mod.weight.device)
        with torch.no_grad():
            nn.init.dirac_(conv.weight, groups=groups)
            if conv.bias is not None:
                conv.bias.zero_()
        return conv
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        norm = type(mod)(width, eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                         track_running_stats=mod.track_running_stats)
        with torch.no_grad():
            if norm.affine:
                norm.weight.fill_(math.sqrt(1.0 + norm.eps))
                norm.bias.zero_()
        return norm.train(mod.training)
    if any(True for _ in mod.parameters()):
        raise PassError(f"cannot make a {type(mod).__name__} that computes the identity")
    return copy.deepcopy(mod)  # an activation module, with its settings (inplace, negative_slope, ...)


def _fold_batch_norm_scale(gm: fx.GraphModule, made: list[fx.Node]) -> None:
    """A BatchNorm without affine parameters divides by ``√(1 + eps)``: scale the layer before it by as much."""
    for first, second in itertools.pairwise(made):
        if second.op != "call_module" or first.op != "call_module":
            continue
        bn = gm.get_submodule(str(second.target))
        layer = gm.get_submodule(str(first.target))
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.affine and \
                isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            with torch.no_grad():
                layer.weight.mul_(math.sqrt(1.0 + bn.eps))
