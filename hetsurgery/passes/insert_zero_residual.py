"""``InsertZeroResidual``: new residual blocks whose branches output exactly zero (Xu et al.'s zero-residual
blocks; CLAFusion's identity blocks for ResNets).

The new block is a copy of a neighbour block of its stage — the same layers, the same inner weights — with
the last parametric layer of every residual branch zeroed: a BatchNorm's scale and shift, or a Linear's /
Conv's weight and bias (an ``nn.MultiheadAttention``'s output projection). Each branch then adds exactly
zero, and the block computes its input, followed by whatever the neighbour applies after its add (a
ResNet's ReLU, which is the identity on the non-negative values a ResNet's stream carries).

The inner weights are copies of the neighbour's, not random: when a shallower model balanced this way is
zipped against a deeper one, the inserted block's inner channels behave like a real block's (the
neighbour's features, on this block's input), so activation matching finds real partners for them,
while its output contributes nothing until it is merged.

Before (``resnet((2, 1, 1))``, stage ``relu``: blocks ``layer1_0_conv1``, ``layer1_1_conv1``).
After ``InsertZeroResidual("relu", (2,))``: a third block ``layer1.2`` (``layer1_2_conv1``) whose ``bn2``
has weight and bias 0, reading ``layer1_1``'s output.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import fx, nn

from hetsurgery.errors import PassError
from hetsurgery.ir import Activation, ModelGraph, OpKind, Stage, Unit, UnitKind
from hetsurgery.passes.edit import ORIGIN_META, add_module, editable, new_names, node_named, relift
from hetsurgery.passes.insert_identity import insertion_point, refuse_before_fixed
from hetsurgery.tracing import OPKIND_META

_ZERO_AT_ZERO = frozenset({OpKind.FLATTEN, OpKind.RESHAPE, OpKind.TRANSPOSE, OpKind.UNSQUEEZE, OpKind.GETITEM,
                           OpKind.SPATIAL})
_MUL = frozenset({operator.mul, operator.imul, torch.mul, "mul", "mul_"})
_ADD = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})


@dataclass(frozen=True)
class InsertZeroResidual:
    """Insert blocks whose residual branches are zero into block stage ``stage`` before the units at
    ``positions`` (``len(stage)`` appends; a position given twice inserts two blocks)."""

    stage: str
    positions: tuple[int, ...]
    name: ClassVar[str] = "insert-zero-residual"
    exact: ClassVar[bool] = True

    def __call__(self, g: ModelGraph) -> ModelGraph:
        st = g.stage(self.stage)
        if st.kind is not UnitKind.BLOCK:
            raise PassError(f"{g.name}: stage {st.key} is a stage of layers; insert layers with InsertIdentity")
        units = [g.unit(k) for k in st.units]
        counts = Counter(_checked(g, st, p) for p in self.positions)
        plans = [(n, *_point_and_template(g, st, units, p)) for p, n in sorted(counts.items(), reverse=True)]
        gm = editable(g)
        for n, point, template in plans:
            for _ in range(n):
                _copy_block(gm, g, node_named(gm, point), template)
        return relift(gm, g, self.spec())

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        return {"pass": self.name, "stage": self.stage, "positions": list(self.positions)}


def _checked(g: ModelGraph, st: Stage, p: object) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= len(st):
        raise PassError(f"{g.name}: stage {st.key} has {len(st)} blocks; positions go from 0 to {len(st)}, not {p!r}")
    return p


def _point_and_template(g: ModelGraph, st: Stage, units: list[Unit], p: int) -> tuple[str, Unit]:
    point = insertion_point(g, st, p)
    where = f"{g.name}: cannot insert a zero-residual block at position {p} of stage {st.key} (after node {point})"
    refuse_before_fixed(where, units, p)
    free = [u for u in units if u.fixed is None]
    if not free:
        raise PassError(f"{where}: every block of the stage changes the shape ({units[0].fixed}); there is no "
                        "block to copy")
    before = [u for u in free if units.index(u) < p]
    template = before[-1] if before else free[0]
    there, entry = g.facts[point], g.facts[template.entry]
    if there.shape != entry.shape or there.writes != entry.writes:
        raise PassError(f"{where}: the values there (shape {there.shape}) are not the stream the stage's blocks "
                        f"read (shape {entry.shape}); insert after the stage's first block")
    for n in template.nodes[template.nodes.index(template.pre) + 1:]:
        act = g.facts[n].activation
        if act is not None and not act.identity_on(there.range):
            raise PassError(f"{where}: the blocks end in {act.value} after their add, which is not the identity on "
                            f"the values there (they lie in {there.range})")
    return point, template


def _copy_block(gm: fx.GraphModule, g: ModelGraph, point: fx.Node, template: Unit) -> None:
    olds = [node_named(gm, n) for n in template.nodes]
    owned = [str(n.target) for n in olds if n.op in ("call_module", "get_attr")]
    names = new_names(gm, owned)
    env: dict[fx.Node, fx.Node] = {node_named(gm, template.entry): point}
    users = list(point.users)
    last = point
    for old in olds:
        with gm.graph.inserting_after(last):
            if old.op == "call_module":
                add_module(gm, names[str(old.target)], copy.deepcopy(gm.get_submodule(str(old.target))))
            elif old.op == "get_attr":
                _copy_attribute(gm, str(old.target), names[str(old.target)])
            target = names[str(old.target)] if old.op in ("call_module", "get_attr") else old.target
            args = fx.map_arg(old.args, lambda n: env.get(n, n))
            kwargs = fx.map_arg(old.kwargs, lambda n: env.get(n, n))
            new = gm.graph.create_node(old.op, target, args, kwargs, type_expr=old.type)  # type: ignore[arg-type]
            new.meta = {k: v for k, v in old.meta.items() if k == OPKIND_META}
        new.meta[ORIGIN_META] = InsertZeroResidual.name
        env[old] = new
        last = new
    for add in (env[o] for o in olds if g.facts[o.name].kind is OpKind.BINARY and o.target in _ADD):
        branch = _branch(g, add, env, olds)
        if branch is not None:
            _zero(gm, g, branch, template)
    for user in users:
        user.replace_input_with(point, env[node_named(gm, template.exit)])


def _branch(g: ModelGraph, add: fx.Node, env: dict[fx.Node, fx.Node], olds: list[fx.Node]) -> fx.Node | None:
    """The operand of a residual add that is the branch; the other carries the stream (the block's input, an
    earlier add of the block, or channel-wise ops applied to one). ``None`` for an add that is no residual join."""
    stream = {env[o] for o in olds if _is_add(g, o)} | {env[o] for o in env if o not in olds}
    operands = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    skips = [a for a in operands if a in stream or _follows_add(a, stream)]
    branches = [a for a in operands if a not in skips]
    if len(operands) != 2 or len(skips) != 1 or len(branches) != 1:
        return None
    return branches[0]


def _is_add(g: ModelGraph, node: fx.Node) -> bool:
    return g.facts[node.name].kind is OpKind.BINARY and node.target in _ADD


def _follows_add(node: fx.Node, stream: set[fx.Node]) -> bool:
    """``node`` is an activation (or a chain of them) applied to a node of the stream (ResNet's ReLU)."""
    while node.meta.get(OPKIND_META) is OpKind.ELEMENTWISE and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
        if node in stream:
            return True
    return False


def _zero(gm: fx.GraphModule, g: ModelGraph, branch: fx.Node, template: Unit) -> None:
    """Make ``branch`` exactly zero: zero the last parametric layer it ends in (through zero-preserving ops)."""
    node = branch
    while True:
        mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
            _zero_tensors(mod, ("weight", "bias"))
            return
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            _zero_tensors(mod, ("weight", "bias"))
            return
        if isinstance(mod, nn.MultiheadAttention):
            _zero_tensors(mod.out_proj, ("weight", "bias"))
            return
        nxt = _zero_preserving_input(gm, node)
        if nxt is None:
            raise PassError(f"{g.name}: the residual branch of block {template.key} ends in node {node.name}, "
                            "which zeroing a layer before it does not make zero; no zero-residual copy of it")
        node = nxt


def _zero_preserving_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
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


def _zero_tensors(mod: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        t = getattr(mod, name, None)
        if isinstance(t, torch.Tensor):
            setattr(mod, name, nn.Parameter(torch.zeros_like(t), requires_grad=t.requires_grad)
                    if isinstance(t, nn.Parameter) else torch.zeros_like(t))


def _copy_attribute(gm: fx.GraphModule, old: str, new: str) -> None:
    """A copy of the tensor (or value) at dotted path ``old`` under ``new``."""
    owner, _, leaf = new.rpartition(".")
    if owner and not _has(gm, owner):
        add_module(gm, owner, nn.Module())
    parent = gm.get_submodule(owner) if owner else gm
    value: object = gm
    for part in old.split("."):
        value = getattr(value, part)
    if isinstance(value, nn.Parameter):
        parent.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad))
    elif isinstance(value, torch.Tensor):
        parent.register_buffer(leaf, value.detach().clone())
    else:
        setattr(parent, leaf, copy.deepcopy(value))


def _has(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True
