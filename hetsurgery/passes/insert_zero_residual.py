"""``InsertZeroResidual``: new residual blocks whose branches output exactly zero (Xu et al.'s zero-residual
blocks; CLAFusion's identity blocks for ResNets).

The new block is a copy of a neighbour block of its stage — the same layers, the same inner weights — with
the last parametric layer of every residual branch zeroed: a BatchNorm's scale and shift, or a Linear's /
Conv's weight and bias (an ``nn.MultiheadAttention``'s output projection, an ``F.linear`` or GPT-2's ``Conv1D``
(``addmm``) with the weight read from the model). On a pre-norm transformer this is LLaMA Pro's block expansion:
the attention's output projection and the MLP's down projection of the new block are zero. Each branch then adds exactly
zero, and the block computes its input, followed by whatever the neighbour applies after its add (a
ResNet's ReLU, which is the identity on the non-negative values a ResNet's stream carries).

The inner weights are copies of the neighbour's, not random: when a shallower model balanced this way is
zipped against a deeper one, the inserted block's inner channels behave like a real block's (the
neighbour's features, on this block's input), so activation matching finds real partners for them,
while its output contributes nothing until it is merged.

A stage whose only block changes the shape (a ResNet stage of one strided block with a projection
shortcut) has no block of its own shape to copy. The new block is then derived from that one: the
shortcut (the shorter of the two paths from the block's input to its add) becomes the identity, strided
convolutions get stride 1, and the layers that read the block's input are rebuilt for the stream's width,
with fresh weights (PyTorch's default initialisation, seeded by the layer's name); every other layer is a
copy.

Before (``resnet((2, 1, 1))``, stage ``relu``: blocks ``layer1_0_conv1``, ``layer1_1_conv1``).
After ``InsertZeroResidual("relu", (2,))``: a third block ``layer1.2`` (``layer1_2_conv1``) whose ``bn2``
has weight and bias 0, reading ``layer1_1``'s output.
"""

from __future__ import annotations

import copy
import operator
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import fx, nn

from hetsurgery.errors import PassError
from hetsurgery.ir import Activation, ModelGraph, OpKind, Stage, Unit, UnitKind
from hetsurgery.ir.structure import attribute_at, owner_of
from hetsurgery.passes.base import Recorded, refusal
from hetsurgery.passes.edit import (
    COPY_META,
    ORIGIN_META,
    ZEROED_META,
    add_module,
    editable,
    new_names,
    node_named,
    relift,
)
from hetsurgery.passes.insertion import counted_positions, insertion_point, refuse_before_fixed
from hetsurgery.tracing import OPKIND_META

_ZERO_AT_ZERO = frozenset({OpKind.FLATTEN, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.UNSQUEEZE, OpKind.GETITEM,
                           OpKind.SPATIAL})
_MUL = frozenset({operator.mul, operator.imul, torch.mul, "mul", "mul_"})
ADD = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})


@dataclass(frozen=True)
class InsertZeroResidual(Recorded):
    """Insert blocks whose residual branches are zero into block stage ``stage`` before the units at
    ``positions`` (``len(stage)`` appends; a position given twice inserts two blocks)."""

    stage: str
    positions: tuple[int, ...]
    name: ClassVar[str] = "insert-zero-residual"
    exact: ClassVar[bool] = True
    post_norm: ClassVar[bool] = False  # blocks that normalise after their add (``InsertPostNormBlock``)

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        gm = editable(g)
        self.edit(g, gm)
        return relift(gm, g)

    def edit(self, g: ModelGraph, gm: fx.GraphModule) -> None:
        """Insert the blocks into ``gm``, an editable copy of ``g``'s module that may already hold other passes'
        edits of other stages (``Pipeline`` lifts once after them all)."""
        for n, point, template, derived in self._plans(g):
            at, width = node_named(gm, point), _width(g, point)
            for _ in range(n):  # one after the other, so that their names count up in order
                at = _copy_block(gm, g, at, width, template, derived, self.post_norm)

    def footprint(self, g: ModelGraph) -> tuple[set[str], set[str]]:
        """The nodes whose readers the new units take over, and the nodes the copies are made from (their
        templates and what the templates read)."""
        plans = self._plans(g)
        nodes = {n.name: n for n in g.module.graph.nodes}
        read = {a.name for _, point, template, _ in plans for k in template.nodes for a in nodes[k].all_input_nodes}
        return {point for _, point, template, _ in plans}, read | {k for _, point, template, _ in plans for k in template.nodes}

    def why_not(self, g: ModelGraph) -> str | None:
        """Why the pass would refuse ``g`` (``None``: it applies), asked without building anything."""
        return refusal(lambda: self._plans(g))

    def _plans(self, g: ModelGraph) -> list[tuple[int, str, Unit, bool]]:
        st = g.stage(self.stage)
        if st.kind is not UnitKind.BLOCK:
            raise PassError(f"{g.name}: stage {st.key} is a stage of layers; insert layers with InsertIdentity")
        units = [g.unit(k) for k in st.units]
        return [(n, *_point_and_template(g, st, units, p, self.post_norm))
                for p, n in counted_positions(g, st, self.positions)]

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        return {"pass": self.name, "stage": self.stage, "positions": list(self.positions)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The pass ``spec()`` describes."""
        return cls(str(spec["stage"]), tuple(int(p) for p in spec["positions"]))


def _point_and_template(g: ModelGraph, st: Stage, units: list[Unit], p: int, post_norm: bool = False
                        ) -> tuple[str, Unit, bool]:
    """Where the block goes, the block it copies, and whether it is derived from a block that changes shape."""
    point = insertion_point(g, st, p)
    kind = "post-norm" if post_norm else "zero-residual"
    where = f"{g.name}: cannot insert a {kind} block at position {p} of stage {st.key} (after node {point})"
    refuse_before_fixed(where, units, p)
    free = [u for u in units if u.fixed is None]
    before = [u for u in free if units.index(u) < p]
    template = before[-1] if before else (free[0] if free else units[0])
    there, stream = g.facts[point], g.facts[template.pre]
    if there.shape != stream.shape or there.writes != stream.writes:
        raise PassError(f"{where}: the values there (shape {there.shape}) are not the stream the stage's blocks "
                        f"write (shape {stream.shape}); insert after the stage's first block")
    if post_norm:
        _check_post_norm(g, where, units, p, template)
        return point, template, False
    for n in template.nodes[template.nodes.index(template.pre) + 1:]:
        if g.facts[n].kind is OpKind.LAYER_NORM:
            raise PassError(f"{where}: the blocks normalise after their residual add (node {n}: post-norm, "
                            "LayerNorm(x + f(x)), as in BERT); a block whose branch is zero still normalises the "
                            "stream, so no inserted block keeps the function exactly (InsertPostNormBlock inserts "
                            "one that approximates it). Pre-norm blocks (x + f(LayerNorm(x))) take zero-residual "
                            "blocks")
        act = g.facts[n].activation
        if act is not None and not act.identity_on(there.range):
            raise PassError(f"{where}: the blocks end in {act.value} after their add, which is not the identity on "
                            f"the values there (they lie in {there.range})")
    return point, template, template.fixed is not None


def post_norms(g: ModelGraph, unit: Unit) -> list[str]:
    """The norms of ``unit`` that carry its stream (post-norm: ``LayerNorm(x + f(x))``), in order: each reads one of
    its residual adds and is what the next add adds to, or comes after the last. (A pre-norm block's second norm
    reads an add too, but feeds a branch.)"""
    nodes = {n.name: n for n in g.module.graph.nodes}
    tail = set(unit.nodes[unit.nodes.index(unit.pre) + 1:])
    out = []
    for name in unit.nodes:
        node = nodes[name]
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if g.facts[name].kind is not OpKind.LAYER_NORM or first is None or first.name not in unit.nodes \
                or not _is_add(g, first):
            continue
        if name in tail or any(_is_add(g, user) and node in user.args[:2] for user in node.users
                               if user.name in unit.nodes):
            out.append(name)
    return out


def _check_post_norm(g: ModelGraph, where: str, units: list[Unit], p: int, template: Unit) -> None:
    """A post-norm block goes right after the block it copies, whose last norm made the stream it reads, and every
    norm after one of its adds is a LayerNorm module with an affine (``InsertPostNormBlock``)."""
    norms = post_norms(g, template)
    if not norms:
        raise PassError(f"{where}: the blocks do not normalise after their residual adds; insert exact "
                        "zero-residual blocks (InsertZeroResidual)")
    if p == 0 or units[p - 1] is not template:
        raise PassError(f"{where}: a post-norm block goes right after a block it can copy, whose last norm gave the "
                        "stream its scale; insert after the stage's first block")
    if template.exit != norms[-1]:
        raise PassError(f"{where}: block {template.key} ends in node {template.exit}, not in the norm {norms[-1]} "
                        "after its last add, so the stream's scale is not that norm's")
    modules = dict(g.module.named_modules())
    nodes = {n.name: n for n in g.module.graph.nodes}
    for name in norms:
        mod = modules.get(str(nodes[name].target)) if nodes[name].op == "call_module" else None
        if not (isinstance(mod, nn.LayerNorm) and mod.elementwise_affine and mod.bias is not None):
            raise PassError(f"{where}: node {name} is not an nn.LayerNorm with a weight and a bias, which the inserted "
                            "block's first norms are set to the identity affine of")


def _copy_block(gm: fx.GraphModule, g: ModelGraph, point: fx.Node, width: int, template: Unit, derived: bool,
                post_norm: bool = False) -> fx.Node:
    """A copy of ``template`` reading ``point`` (``width`` channels), its branches zeroed; returns its output. With
    ``post_norm`` every norm after an add but the last gets the identity affine (``InsertPostNormBlock``)."""
    olds = [node_named(gm, n) for n in template.nodes]
    entry = node_named(gm, template.entry)
    env: dict[fx.Node, fx.Node] = {entry: point}
    dropped: set[fx.Node] = set()
    if derived:  # the shortcut becomes the identity: its operand reads the point, its nodes go
        for old in olds:
            if _is_add(g, old):
                shortcut, nodes = _shortcut(old, entry, olds)
                env[shortcut] = point
                dropped |= nodes
    kept = [o for o in olds if o not in dropped]
    owned = [str(n.target) for n in kept if n.op in ("call_module", "get_attr")]
    names = new_names(gm, owned)
    users = list(point.users)
    last = point
    for old in kept:
        with gm.graph.inserting_after(last):
            if old.op == "call_module":
                mod = copy.deepcopy(gm.get_submodule(str(old.target)))
                if derived:
                    mod = _for_stream(mod, width if entry in old.all_input_nodes else None, names[str(old.target)])
                add_module(gm, names[str(old.target)], mod)
            elif old.op == "get_attr":
                _copy_attribute(gm, str(old.target), names[str(old.target)])
            target = names[str(old.target)] if old.op in ("call_module", "get_attr") else old.target
            args = fx.map_arg(old.args, lambda n: env.get(n, n))
            kwargs = fx.map_arg(old.kwargs, lambda n: env.get(n, n))
            new = gm.graph.create_node(old.op, target, args, kwargs, type_expr=old.type)  # type: ignore[arg-type]
            new.meta = {k: v for k, v in old.meta.items() if k == OPKIND_META}
        new.meta[ORIGIN_META] = "insert-post-norm-block" if post_norm else InsertZeroResidual.name
        if old.op in ("call_module", "get_attr") and not (derived and entry in old.all_input_nodes):
            new.meta[COPY_META] = str(old.target)  # rebuilt layers (derived blocks) have fresh weights: no copy
        env[old] = new
        last = new
    by_name = {o.name: o for o in kept}
    norms = [env[by_name[name]] for name in post_norms(g, template)] if post_norm else []
    for add in (env[o] for o in kept if _is_add(g, o)):
        branch = _branch(g, add, env, kept, set(norms))
        if branch is not None:
            _zero(gm, g, branch, template)
    for norm in norms[:-1]:  # the identity affine: the block's last norm alone gives the stream its scale
        mod = gm.get_submodule(str(norm.target))
        assert isinstance(mod, nn.LayerNorm) and mod.bias is not None  # _check_post_norm
        mod.weight = nn.Parameter(torch.ones_like(mod.weight), requires_grad=mod.weight.requires_grad)
        mod.bias = nn.Parameter(torch.zeros_like(mod.bias), requires_grad=mod.bias.requires_grad)
    out = env[node_named(gm, template.exit)]
    needed = _ancestors(out)
    for user in users:
        if user not in needed:  # what the new block reads itself (the stream's size for a rotary table) stays
            user.replace_input_with(point, out)
    return out


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        for arg in todo.pop().all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                todo.append(arg)
    return seen


def _width(g: ModelGraph, node: str) -> int:
    f = g.facts[node]
    assert f.shape is not None and f.channel_dim is not None
    return f.shape[f.channel_dim]


def _shortcut(add: fx.Node, entry: fx.Node, olds: list[fx.Node]) -> tuple[fx.Node, set[fx.Node]]:
    """The operand of ``add`` on the shorter path from ``entry`` (a projection shortcut), and the nodes only it
    needs."""
    inside = set(olds)

    def needs(node: fx.Node) -> set[fx.Node]:
        out, todo = set(), [node]
        while todo:
            n = todo.pop()
            if n in inside and n not in out:
                out.add(n)
                todo += n.all_input_nodes
        return out

    a, b = (x for x in add.args[:2] if isinstance(x, fx.Node))
    na, nb = needs(a), needs(b)
    short, other = (a, nb) if len(na) <= len(nb) else (b, na)
    return short, needs(short) - other


def _for_stream(mod: nn.Module, width: int | None, name: str) -> nn.Module:
    """``mod`` with stride 1, and rebuilt to read ``width`` channels when it reads the block input."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        mod.stride = tuple(1 for _ in mod.stride)
    if width is None:
        return mod
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        if isinstance(mod, nn.modules.conv._ConvNd) and mod.in_channels != width and mod.groups == 1:
            make: Callable[..., nn.Module] = type(mod)
            return make(width, mod.out_channels, mod.kernel_size, stride=1, padding=mod.padding,
                        dilation=mod.dilation, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                        dtype=mod.weight.dtype, device=mod.weight.device)
        if isinstance(mod, nn.Linear) and mod.in_features != width:
            return nn.Linear(width, mod.out_features, bias=mod.bias is not None, dtype=mod.weight.dtype,
                             device=mod.weight.device)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.num_features != width:
            return type(mod)(width, eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                             track_running_stats=mod.track_running_stats)
    return mod


def _branch(g: ModelGraph, add: fx.Node, env: dict[fx.Node, fx.Node], olds: list[fx.Node],
            norms: set[fx.Node] | None = None) -> fx.Node | None:
    """The operand of a residual add that is the branch; the other carries the stream (the block's input, an
    earlier add of the block, a post-norm block's ``norms`` after its adds, or channel-wise ops applied to one).
    ``None`` for an add that is no residual join."""
    stream = {env[o] for o in olds if _is_add(g, o)} | {env[o] for o in env if o not in olds} | (norms or set())
    operands = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    skips = [a for a in operands if a in stream or _follows_add(a, stream)]
    branches = [a for a in operands if a not in skips]
    if len(operands) != 2 or len(skips) != 1 or len(branches) != 1:
        return None
    return branches[0]


def _is_add(g: ModelGraph, node: fx.Node) -> bool:
    return g.facts[node.name].kind is OpKind.BINARY and node.target in ADD


def _follows_add(node: fx.Node, stream: set[fx.Node]) -> bool:
    """``node`` is an activation (or a chain of them) applied to a node of the stream (ResNet's ReLU)."""
    while node.meta.get(OPKIND_META) is OpKind.ELEMENTWISE and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
        if node in stream:
            return True
    return False


def _zero(gm: fx.GraphModule, g: ModelGraph, branch: fx.Node, template: Unit) -> None:
    """Make ``branch`` exactly zero: zero the last parametric layer it ends in (through zero-preserving ops)."""
    node = branch_layer(gm, branch)
    if node is None:
        raise PassError(f"{g.name}: the residual branch of block {template.key} does not end, through ops that keep "
                        "zero, in a layer whose weights zeroing makes it zero; no zero-residual copy of it")
    mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    if isinstance(mod, nn.MultiheadAttention):
        node.meta[ZEROED_META] = tuple(f"out_proj.{n}" for n in _zero_tensors(mod.out_proj, ("weight", "bias")))
    elif mod is not None:
        node.meta[ZEROED_META] = _zero_tensors(mod, ("weight", "bias"))
    else:  # F.linear, GPT-2's Conv1D: the weights read from the model
        for attr in (a for a in [*node.args, *node.kwargs.values()] if isinstance(a, fx.Node) and a.op == "get_attr"):
            owner, leaf = owner_of(gm, str(attr.target))
            if _zero_tensors(owner, (leaf,)):
                attr.meta[ZEROED_META] = ("",)  # the attribute itself


def branch_layer(gm: fx.GraphModule, branch: fx.Node) -> fx.Node | None:
    """The layer ``branch`` ends in, through ops that keep zero (``zero_preserving_input``): an affine BatchNorm, a
    Linear or convolution, an ``nn.MultiheadAttention`` (its output projection), an ``F.linear`` or ``addmm``; zero
    its weights and the branch is zero. ``None`` when the branch ends in anything else."""
    node: fx.Node | None = branch
    while node is not None:
        mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if (isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine) or isinstance(
                mod, (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)) \
                or node.meta.get(OPKIND_META) in (OpKind.FUNCTIONAL_LINEAR, OpKind.ADDMM):
            return node
        node = zero_preserving_input(gm, node)
    return None


def zero_preserving_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The input through which ``node`` maps zero to zero (dropout, ReLU, reshapes, a scale), or ``None``."""
    kind = node.meta.get(OPKIND_META)
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if kind in _ZERO_AT_ZERO and first is not None:
        return first
    if kind is OpKind.ELEMENTWISE and first is not None:
        act = _activation(gm, node)
        return first if act is not None and act.zero_at_zero else None
    if kind is OpKind.BINARY and node.target in _MUL:
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        moving = [a for a in tensors if a.op != "get_attr"]
        return moving[0] if len(moving) == 1 else None
    return None


def _activation(gm: fx.GraphModule, node: fx.Node) -> Activation | None:
    from hetsurgery.tracing.classify import activation_of

    return activation_of(node, dict(gm.named_modules()))


def _zero_tensors(mod: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """Set the tensors ``names`` of ``mod`` to zero; the names it set."""
    done = []
    for name in names:
        t = getattr(mod, name, None)
        if isinstance(t, torch.Tensor):
            setattr(mod, name, nn.Parameter(torch.zeros_like(t), requires_grad=t.requires_grad)
                    if isinstance(t, nn.Parameter) else torch.zeros_like(t))
            done.append(name)
    return tuple(done)


def _copy_attribute(gm: fx.GraphModule, old: str, new: str) -> None:
    """A copy of the tensor (or value) at dotted path ``old`` under ``new``."""
    parent, leaf = owner_of(gm, new, make=True)
    value = attribute_at(gm, old)
    if isinstance(value, nn.Parameter):
        parent.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad))
    elif isinstance(value, torch.Tensor):
        parent.register_buffer(leaf, value.detach().clone())
    else:
        setattr(parent, leaf, copy.deepcopy(value))

