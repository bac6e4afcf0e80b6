"""``FoldNorms``: each LayerNorm's (or RMSNorm's) scale and shift moved into the Linear layers that read it.

``LN(x) = γ ⊙ n(x) + β`` feeds layers ``y = W LN(x) + b``; the same function is ``y = (W diag γ) n(x) + (W β +
b)`` with the norm's ``γ = 1`` and ``β = 0`` (SliceGPT's "computational invariance"). The norm is then a pure
normalisation: ``n(Q x) = Q n(x)`` for every orthogonal ``Q`` (RMSNorm), or every orthogonal ``Q`` that keeps
the all-ones direction (LayerNorm, which subtracts the mean), so a stream read only through folded norms can
be carried by any such map, not only by permutations: the stream zipping of ``plan.solvers.stream``.

A norm folds when it normalises the channel dim of a permutable group alone, and every path from its output
ends in a Linear (``nn.Linear``, ``F.linear``, GPT-2's ``addmm``) that reads the group as its input features,
through ops that commute with a per-channel affine map (dropout and other identities, a mean over tokens,
indexing, reshapes that keep the channels); a Linear whose weight is also used elsewhere (tied embeddings)
does not take the scale, and a shift needs the readers' biases. Post-norm blocks (BERT: the norm's output is
the residual stream itself, added to the next branch) do not fold. ``fold_report`` says, per norm, whether
and why not, without building anything; the pass folds the norms that can and leaves the others as they are.

Before (``transformer("manual", depth=1)``): ``blocks.0.ln1`` (γ, β) -> ``blocks.0.attn.q`` (W, b).
After ``FoldNorms()``: ``blocks.0.ln1`` (1, 0) -> ``blocks.0.attn.q`` (W diag γ, W β + b); the model computes the
same function.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from hetsurgery.ir import ModelGraph, OpKind, Role, Slot, slots_by_param
from hetsurgery.ir.facts import Activation
from hetsurgery.ir.slot_algebra import apply_matrix
from hetsurgery.passes.base import Recorded

_LINEARS = frozenset({OpKind.LINEAR, OpKind.FUNCTIONAL_LINEAR, OpKind.ADDMM})
_LAYOUT = frozenset({OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.UNSQUEEZE, OpKind.FLATTEN, OpKind.GETITEM})
_MEANS = frozenset({"mean", torch.mean})
_SCALES = frozenset({operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div", "mul_", "div_"})


@dataclass(frozen=True)
class Reader:
    """A Linear reading a norm's output: its weight (the slot holding the group), its bias (or ``None``)."""

    node: str
    weight: str
    slot: Slot
    bias: str | None


@dataclass(frozen=True)
class NormFold:
    """One norm: its node, the group it normalises, whether it subtracts the mean (LayerNorm) or not (RMSNorm),
    its scale and shift parameters, its readers, and why it cannot fold (``None``: it can)."""

    node: str
    group: int
    centred: bool
    weight: str | None
    bias: str | None
    readers: tuple[Reader, ...]
    why_not: str | None


@dataclass(frozen=True, eq=False)
class FoldNorms(Recorded):
    """Fold the scale and shift of every norm that can fold into its readers (see the module); with ``groups``,
    only the norms over those groups."""

    groups: tuple[int, ...] | None = None
    name: ClassVar[str] = "fold-norms"
    exact: ClassVar[bool] = True

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        updates: dict[str, torch.Tensor] = {}
        for f in fold_report(g):
            if f.why_not is None and (self.groups is None or f.group in self.groups):
                updates.update(_folded(g, f, updates))
        return g.with_updates(updates) if updates else g


def stream_report(g: ModelGraph) -> dict[int, str | None]:
    """Per permutable group that a norm normalises: ``None`` when the group is a stream that only LayerNorms read
    and that every map keeping the all-ones direction may carry once they are folded (every norm over it
    centres and folds, every Linear reading it reads a norm's output, nothing scales it per channel), else why
    not. Asked before folding; ``folded`` says whether it has been."""
    by_group: dict[int, list[NormFold]] = {}
    for f in fold_report(g):
        by_group.setdefault(f.group, []).append(f)
    consumers = {gid: {name for name, slots in slots_by_param(g.groups).items()
                       for h, s in slots if h == gid and s.role is Role.CONSUME} for gid in by_group}
    out: dict[int, str | None] = {}
    for gid, folds in by_group.items():
        bad = next((f for f in folds if f.why_not is not None or not f.centred), None)
        if bad is not None:
            out[gid] = f"norm {bad.node} " + (f"cannot fold: {bad.why_not}" if bad.why_not else "is an RMSNorm")
            continue
        readers = {r.weight for f in folds for r in f.readers}
        raw = sorted(consumers[gid] - readers)
        scaled = _scaled(g, gid)
        out[gid] = (f"{raw[0]} reads the stream without a norm" if raw else
                    f"node {scaled} scales the stream per channel" if scaled else None)
    return out


def folded(g: ModelGraph, gid: int) -> bool:
    """Every norm over group ``gid`` has scale 1 and shift 0 (or none): ``FoldNorms`` ran (or had nothing to do)."""
    for f in fold_report(g):
        if f.group == gid:
            for name, value in ((f.weight, 1.0), (f.bias, 0.0)):
                if name is not None and not bool((g.params[name] == value).all()):
                    return False
    return True


def _scaled(g: ModelGraph, gid: int) -> str | None:
    """A node that multiplies (or divides) the group by a parameter, channel by channel (a layer scale)."""
    for node in g.module.graph.nodes:
        f = g.facts.get(node.name)
        if f is None or f.kind is not OpKind.BINARY or gid not in f.writes:
            continue
        if node.target in _SCALES and any(isinstance(a, fx.Node) and a.op == "get_attr" for a in node.args):
            return node.name
    return None


def fold_report(g: ModelGraph) -> list[NormFold]:
    """Every norm over the channels of a permutable group, in graph order, and whether it folds."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    modules = dict(g.module.named_modules())
    out = []
    for node in g.module.graph.nodes:
        f = g.facts.get(node.name)
        if f is None or f.kind is not OpKind.LAYER_NORM or len(f.writes) != 1:
            continue
        gid = f.writes[0]
        if not g.group(gid).perm_ok:
            continue
        out.append(_norm_fold(g, node, gid, nodes, modules))
    return out


def _norm_fold(g: ModelGraph, node: fx.Node, gid: int, nodes: dict[str, fx.Node], modules: dict[str, nn.Module]
               ) -> NormFold:
    params = _norm_params(g, node, modules)
    if isinstance(params, str):
        return NormFold(node.name, gid, True, None, None, (), params)
    centred, weight, bias = params
    readers: list[Reader] = []
    why = None
    for user, how in _paths(g, node, gid):
        if how is not None:
            why = how
            break
        reader = _reader(g, nodes[user], gid)
        if isinstance(reader, str):
            why = reader
            break
        readers.append(reader)
    if why is None and bias is not None and bool(g.params[bias].abs().max() > 0):
        lacking = [r.node for r in readers if r.bias is None]
        if lacking:
            why = f"its shift β is not zero and {lacking[0]} has no bias to take it"
    if why is None and not readers:
        why = "nothing reads it"
    return NormFold(node.name, gid, centred, weight, bias, tuple(readers), why)


def _norm_params(g: ModelGraph, node: fx.Node, modules: dict[str, nn.Module]) -> tuple[bool, str | None, str | None] | str:
    """``(centred, weight, bias)`` parameter names of a norm module over the last dim, or why not."""
    if node.op != "call_module":
        return f"{node.name} is a functional norm ({node.target}); only nn.LayerNorm and nn.RMSNorm modules fold"
    mod = modules[str(node.target)]
    if not isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) or len(mod.normalized_shape) != 1:
        return f"{node.name} normalises over {getattr(mod, 'normalized_shape', '?')}, not the channels alone"
    f = g.facts[node.name]
    if f.shape is None or f.channel_dim not in (len(f.shape) - 1, -1):
        return f"{node.name} does not normalise its output's last dim"
    names = [f"{node.target}.{p}" for p in ("weight", "bias")]
    weight, bias = (n if n in g.params else None for n in names)
    return isinstance(mod, nn.LayerNorm), weight, bias


def _paths(g: ModelGraph, node: fx.Node, gid: int) -> Iterator[tuple[str, str | None]]:
    """The Linear nodes the norm's output reaches through per-channel-affine-commuting ops, each with ``None``;
    or the first node where that fails, with the reason."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop(0)
        if user.name in seen:
            continue
        seen.add(user.name)
        f = g.facts.get(user.name)
        kind = f.kind if f is not None else None
        if kind in _LINEARS:
            yield user.name, None
            continue
        if kind is OpKind.SHAPE:
            continue
        passes = (kind in _LAYOUT or (kind is OpKind.ELEMENTWISE and f is not None and f.activation is
                                      Activation.IDENTITY) or (kind is OpKind.REDUCE and user.target in _MEANS))
        if not passes or f is None or gid not in f.writes:
            what = kind.value if kind is not None else user.op
            yield user.name, (f"its output reaches {user.name} ({what}), which does not take a per-channel scale "
                              "and shift through (a post-norm residual, or another use)")
            return
        todo += list(user.users)


def _reader(g: ModelGraph, node: fx.Node, gid: int) -> Reader | str:
    """The Linear ``node``: its weight's slot on ``gid`` and its bias, or why it cannot take a scale."""
    weight, bias = _linear_params(g, node)
    if weight is None:
        return f"{node.name} reads its weight from {node.args[1] if len(node.args) > 1 else '?'}, not a parameter"
    slots = slots_by_param(g.groups).get(weight, [])
    mine = [s for h, s in slots if h == gid and s.role is Role.CONSUME]
    others = [(h, s) for h, s in slots if h == gid and s.role is Role.PRODUCE]
    if len(mine) != 1 or others:
        return f"{weight} holds the normalised channels {len(mine)} times, or produces them too (tied weights)"
    return Reader(node.name, weight, mine[0], bias)


def _linear_params(g: ModelGraph, node: fx.Node) -> tuple[str | None, str | None]:
    if node.op == "call_module":
        names = [f"{node.target}.{p}" for p in ("weight", "bias")]
        weight, bias = (n if n in g.params else None for n in names)
        return weight, bias
    args = list(node.args)
    if node.target is torch.addmm or node.target == "addmm":
        raw_w, raw_b = (args[2] if len(args) > 2 else None), (args[0] if args else None)
    else:
        raw_w = args[1] if len(args) > 1 else node.kwargs.get("weight")
        raw_b = args[2] if len(args) > 2 else node.kwargs.get("bias")
    return _attr(g, raw_w), _attr(g, raw_b)


def _attr(g: ModelGraph, arg: object) -> str | None:
    if isinstance(arg, fx.Node) and arg.op == "get_attr" and str(arg.target) in g.params:
        return str(arg.target)
    return None


def _folded(g: ModelGraph, f: NormFold, done: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The new tensors: the readers' weights times γ (along the channels), biases plus ``W β``, γ = 1, β = 0."""
    def current(name: str) -> torch.Tensor:
        return done.get(name, g.params[name])

    gamma = g.params[f.weight].detach().double() if f.weight is not None else None
    beta = g.params[f.bias].detach().double() if f.bias is not None else None
    out: dict[str, torch.Tensor] = {}
    for r in f.readers:
        w = current(r.weight)
        if beta is not None and r.bias is not None:
            shift = apply_matrix(w.detach().double(), r.slot, beta[None, :]).squeeze(r.slot.dim)
            out[r.bias] = (current(r.bias).double() + shift.reshape(current(r.bias).shape)).to(w.dtype)
        if gamma is not None:
            out[r.weight] = apply_matrix(w.detach().double(), r.slot, torch.diag(gamma)).to(w.dtype)
    if f.weight is not None:
        out[f.weight] = torch.ones_like(g.params[f.weight])
    if f.bias is not None:
        out[f.bias] = torch.zeros_like(g.params[f.bias])
    return out

