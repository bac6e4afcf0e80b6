"""Check that models share a topology: the same operations with the same settings, the same groups with the
same slots and block structure (widths may differ).

Two models whose parameters line up can still compute different things: attention with 4 heads and with 8
heads has the same weight shapes, as do convolutions with different strides or activations of different
kinds. Merging them into the first model's structure would silently change the others' function, so every
fx node is compared (its op, its target, its layer's settings other than widths, its literal arguments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import fx, nn

from hetsurgery.errors import ExportError, MergeInputError
from hetsurgery.export.modules import constructor_args
from hetsurgery.ir import Blocks, ModelGraph, OpKind
from hetsurgery.merging.head_counts import head_count_change
from hetsurgery.tracing import OPKIND_META

# constructor arguments that are widths (they may differ between the models of a width-heterogeneous merge)
WIDTH_ARGS = frozenset({"in_features", "out_features", "in1_features", "in2_features", "in_channels", "out_channels",
                        "num_features", "normalized_shape", "num_channels", "embedding_dim", "embed_dim", "kdim",
                        "vdim", "num_parameters"})
# ops whose integer arguments spell sizes (a reshape to the width): compared through the groups instead
SIZED = frozenset({OpKind.RESHAPE, OpKind.FLATTEN, OpKind.UNSQUEEZE})

DEPTH_HINT = ("merging needs the same layers in every model after depth alignment; models of different depth "
              "merge with depth='cla', 'sma' or 'lma'")


def check_same_topology(graphs: Sequence[ModelGraph], *, equal_widths: bool) -> None:
    ref = graphs[0]
    for g in graphs[1:]:
        out_a, out_b = _output_shape(ref), _output_shape(g)
        if out_a != out_b:
            raise MergeInputError(f"{ref.name} outputs shape {out_a} but {g.name} outputs {out_b}")
        if len(g.groups) != len(ref.groups):
            raise MergeInputError(f"{g.name} has {len(g.groups)} permutation groups but {ref.name} has "
                             f"{len(ref.groups)}: the models differ in topology ({DEPTH_HINT})")
        for a, b in zip(ref.groups, g.groups, strict=True):
            sig_a = sorted((s.param, s.dim, s.role.value, s.chunks) for s in a.slots)
            sig_b = sorted((s.param, s.dim, s.role.value, s.chunks) for s in b.slots)
            if sig_a != sig_b:
                raise MergeInputError(f"group {a.id} ({a.label}) differs between {ref.name} and {g.name}: "
                                 f"{sorted(set(sig_a) ^ set(sig_b))[:3]} ({DEPTH_HINT})")
            if a.structure.count != b.structure.count and not (head_count_change(a.structure, b.structure)
                                                               and not equal_widths):
                raise MergeInputError(
                    f"group {a.id} ({a.label}) comes as {_blocks(a.structure)} in {ref.name} but as "
                    f"{_blocks(b.structure)} in {g.name}: channels may only move inside their blocks (attention "
                    "heads, conv groups), and these blocks do not correspond; the models cannot be merged "
                    "channel by channel" + ("; heads of one size in different counts merge with method 'zip'"
                                           if head_count_change(a.structure, b.structure) else ""))
            if a.size != b.size and (equal_widths or not a.perm_ok):
                why = "is frozen" if not a.perm_ok else "needs equal widths for this method (use zip, ot or mal)"
                raise MergeInputError(f"group {a.id} ({a.label}) has width {a.size} in {ref.name} and {b.size} in "
                                 f"{g.name}; it {why}")


def _output_shape(g: ModelGraph) -> object:
    out = next(n for n in g.module.graph.nodes if n.op == "output")
    arg = out.args[0]
    meta = getattr(arg, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _blocks(b: Blocks) -> str:
    return "free channels" if b.count == 1 else f"{b.count} blocks of {b.size} (heads or groups)"


@dataclass(frozen=True)
class NodeSignature:
    """What a node computes, widths aside: a layer's class and settings, or an op's target and literal arguments."""

    op: str
    target: str
    settings: tuple[str, ...]

    def __str__(self) -> str:
        if self.op == "call_module":
            return f"{self.target}({', '.join(self.settings)})"
        return f"{self.op} {self.target}" + (f" with arguments {', '.join(self.settings)}" if self.settings else "")


def check_same_operations(graphs: Sequence[ModelGraph]) -> None:
    """Every model's fx nodes compute what the first model's do (checked after the groups and widths, whose
    messages are more precise when widths differ: a scale of 1/sqrt(head width) differs with the width)."""
    for g in graphs[1:]:
        _same_operations(graphs[0], g)


def _same_operations(ref: ModelGraph, g: ModelGraph) -> None:
    a_nodes, b_nodes = list(ref.module.graph.nodes), list(g.module.graph.nodes)
    if len(a_nodes) != len(b_nodes):
        raise MergeInputError(f"{ref.name} has {len(a_nodes)} graph nodes but {g.name} has {len(b_nodes)}: "
                              f"the models differ in topology ({DEPTH_HINT})")
    a_mods, b_mods = dict(ref.module.named_modules()), dict(g.module.named_modules())
    for x, y in zip(a_nodes, b_nodes, strict=True):
        sx, sy = signature(x, a_mods), signature(y, b_mods)
        if sx != sy:
            raise MergeInputError(f"node {x.name} of {ref.name} is {sx} but node {y.name} of {g.name} is {sy}: the "
                                  "models compute different things, so their weights cannot be merged into one of them")


def signature(node: fx.Node, modules: dict[str, nn.Module]) -> NodeSignature:
    """``node``'s ``NodeSignature`` (``modules``: the graph module's ``named_modules()``)."""
    if node.op == "call_module":
        mod = modules[str(node.target)]
        try:
            _, kwargs = constructor_args(mod, str(node.target))
        except ExportError:  # a layer model.py cannot rebuild: its class is all we compare
            kwargs = {}
        if _depthwise(mod):  # a depthwise conv's groups are its width
            kwargs.pop("groups", None)
        settings = tuple(sorted(f"{k}={v!r}" for k, v in kwargs.items() if k not in WIDTH_ARGS))
        return NodeSignature(node.op, f"{type(mod).__module__}.{type(mod).__qualname__}", settings)
    target = getattr(node.target, "__qualname__", None) if node.op == "call_function" else None
    sized = node.meta.get(OPKIND_META) in SIZED
    literals = tuple(repr(v) for v in _literals(node.args, node.kwargs) if not (sized and isinstance(v, int)))
    return NodeSignature(node.op, str(target or node.target), literals)


def _literals(args: object, kwargs: object) -> list[object]:
    out: list[object] = []

    def walk(v: object) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for key, x in sorted(v.items(), key=lambda kv: str(kv[0])):
                out.append(key)
                walk(x)
        elif not isinstance(v, fx.Node):
            out.append(v)

    walk(args)
    walk(kwargs)
    return out


def _depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels
