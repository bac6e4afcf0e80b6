"""Pictures of a ``ModelGraph`` (layers and permutation groups) and of a ``WidthPlan`` (who went where).

DOT is built with the ``graphviz`` package and rendered by Graphviz's ``dot`` binary. Without ``dot`` the
``.gv`` source is written instead, with a note on how to install Graphviz. ``BUILDERS`` maps each kind
of object to its DOT builder; a depth plan (two columns of units with alignment edges) is drawn by
``depth_pictures``.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8], in_features=4, num_classes=2), torch.randn(2, 4))
>>> "g0 · 8" in to_dot(g).source
True
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hetsurgery.errors import ExportError
from hetsurgery.export.atomic import write_bytes, write_text
from hetsurgery.export.depth_pictures import depth_plan_dot
from hetsurgery.export.errors import InputError
from hetsurgery.ir import ModelGraph, OpKind, PermGroup
from hetsurgery.ir.graph import owner_of
from hetsurgery.plan.depth import DepthPlan
from hetsurgery.plan.width_plan import GroupMatch, WidthPlan
from hetsurgery.tracing.lift import OPKIND_META

if TYPE_CHECKING:  # imported where a picture is drawn, not by `import hetsurgery`
    import graphviz

FORMATS = ("svg", "png")
INSTALL_DOT = ("Graphviz's `dot` is not installed. Install it with `apt-get install graphviz` (Debian/Ubuntu), "
               "`brew install graphviz` (macOS) or `conda install -c conda-forge graphviz`, then run "
               "`dot -T{fmt} {gv} -o {out}`.")
# a qualitative palette (ColorBrewer Set3 and Paired), one colour per group id
PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#bc80bd",
           "#ccebc5", "#ffed6f", "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6")
FROZEN = "#d9d9d9"
MODEL_COLOURS = ("#1f78b4", "#e31a1c", "#33a02c", "#6a3d9a", "#ff7f00", "#b15928")
_NORMS = frozenset({OpKind.BATCH_NORM, OpKind.LAYER_NORM, OpKind.GROUP_NORM})
HIDDEN_BELOW = 0.01  # width-plan edges lighter than 1% of their merged neuron's largest weight are left out


@dataclass(frozen=True)
class Picture:
    """A rendered picture, or (``rendered`` false) the ``.gv`` source written because ``dot`` is missing."""

    path: Path
    rendered: bool
    note: str = ""


def render(obj: ModelGraph | WidthPlan | DepthPlan, path: str | os.PathLike[str], **options: Any) -> Picture:
    """Draw ``obj`` to ``path``; the format comes from the suffix (``.svg``, ``.png``; ``.gv`` for the source).

    ``options`` go to the builder: ``render(plan, "plan.svg", group=3, names=("A", "B"))``.
    """
    import graphviz

    path = Path(path)
    fmt = picture_format(path)
    dot = to_dot(obj, **options)
    if fmt in ("gv", "dot"):
        return Picture(write_text(path, dot.source), rendered=False)
    if shutil.which("dot") is None:
        return _source_only(dot, path, fmt)
    try:
        data = dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        return _source_only(dot, path, fmt)
    except graphviz.CalledProcessError as exc:
        raise ExportError(f"dot failed to render {path.name}: {exc.stderr!r}") from exc
    return Picture(write_bytes(path, data), rendered=True)


def picture_format(path: str | os.PathLike[str]) -> str:
    """``svg``, ``png``, ``gv`` or ``dot`` from the suffix of ``path``; ``InputError`` for any other."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in (*FORMATS, "gv", "dot"):
        raise InputError(f"cannot render to {path.name}: use a .svg, .png or .gv file name")
    return fmt


def written_path(path: str | os.PathLike[str]) -> Path:
    """The file ``render`` writes for ``path``: ``path`` itself, or its ``.gv`` source when ``dot`` is missing."""
    path = Path(path)
    if picture_format(path) in FORMATS and shutil.which("dot") is None:
        return path.with_suffix(".gv")
    return path


def to_dot(obj: ModelGraph | WidthPlan | DepthPlan, **options: Any) -> graphviz.Digraph:
    """The DOT graph of ``obj`` (see ``BUILDERS`` for what can be drawn)."""
    builder = next((b for kind, b in BUILDERS.items() if isinstance(obj, kind)), None)
    if builder is None:
        raise ExportError(f"cannot draw a {type(obj).__name__}; hetsurgery draws {', '.join(k.__name__ for k in BUILDERS)}")
    return builder(obj, **options)


def _source_only(dot: graphviz.Digraph, path: Path, fmt: str) -> Picture:
    gv = write_text(path.with_suffix(".gv"), dot.source)
    note = INSTALL_DOT.format(fmt=fmt, gv=gv, out=path)
    warnings.warn(note, RuntimeWarning, stacklevel=3)
    return Picture(gv, rendered=False, note=note)


# -- ModelGraph ---------------------------------------------------------------------------------------------

def graph_dot(g: ModelGraph) -> graphviz.Digraph:
    """Layers (boxes) and groups (ellipses, one colour each; frozen ones grey with the reason as tooltip).

    An edge runs from the layer that produces a group to the group, and from the group to each layer that
    consumes it. A group label reads ``g3 · 32`` (id and width) and ``4x8`` for blocks (heads, grouped convs).
    """
    import graphviz

    dot = graphviz.Digraph(g.name, graph_attr={"rankdir": "TB", "label": _graph_title(g), "labelloc": "t",
                                                "fontname": "Helvetica", "tooltip": g.name},
                           node_attr={"fontname": "Helvetica", "fontsize": "10"}, edge_attr={"arrowsize": "0.6"})
    nx_graph = g.to_networkx()
    layers = _layers_in_call_order(g, nx_graph)
    placed = _draw_units(dot, g, layers)
    for layer in layers:
        if layer not in placed:
            _layer_node(dot, g, layer)
    for grp in g.groups:
        colour = FROZEN if grp.frozen else PALETTE[grp.id % len(PALETTE)]
        dot.node(f"group {grp.id}", _group_label(grp), shape="ellipse", style="filled", fillcolor=colour,
                 tooltip=_group_tooltip(grp), fontcolor="#555555" if grp.frozen else "black")
    carriers = _per_channel_layers(g)
    for u, v in nx_graph.edges:
        gid = u[1] if u[0] == "group" else v[1]
        colour = "#999999" if g.group(gid).frozen else _darker(PALETTE[gid % len(PALETTE)])
        if u[0] == "layer" and u[1] in carriers:  # a norm layer passes its group through: drawn below it, dashed
            dot.edge(_node_id(v), _node_id(u), color=colour, style="dashed", dir="none")
        else:
            dot.edge(_node_id(u), _node_id(v), color=colour)
    return dot


def _layer_node(dot: graphviz.Digraph, g: ModelGraph, layer: str) -> None:
    dot.node(f"layer {layer}", f"{layer}\n{_layer_class(g, layer)}", shape="box", style="rounded",
             tooltip=_layer_tooltip(g, layer))


def _draw_units(dot: graphviz.Digraph, g: ModelGraph, layers: Sequence[str]) -> set[str]:
    """Stages as clusters holding their units as clusters of layers; a unit inserted or fused by a structural
    pass is drawn dashed and says which pass made it. Returns the layers drawn inside a unit."""
    by_node = {n.name: str(n.target) for n in g.module.graph.nodes if n.op == "call_module"}
    members = {u.key: [by_node[n] for n in u.nodes if by_node.get(n) in layers] for u in g.units}
    staged = {k: st for st in g.stages for k in st.units}
    placed: set[str] = set()

    def unit_cluster(parent: graphviz.Digraph, key: str) -> None:
        u = g.unit(key)
        note = f" [{u.origin}]" if u.origin else (" (fixed)" if u.fixed else "")
        attrs = {"label": f"{u.key}{note}", "style": "dashed,rounded" if u.origin else "rounded",
                 "color": "#d95f02" if u.origin else "#7f7f7f", "fontsize": "9", "tooltip": u.fixed or u.key}
        with parent.subgraph(name=f"cluster_unit_{u.key}", graph_attr=attrs) as c:
            for layer in members[u.key]:
                if layer not in placed:
                    _layer_node(c, g, layer)
                    placed.add(layer)

    for st in g.stages:
        with dot.subgraph(name=f"cluster_{st.key}", graph_attr={
                "label": f"{st.key}: {len(st)} {st.kind.value}s", "style": "filled", "fillcolor": "#f7f7f7",
                "color": "#bdbdbd", "fontsize": "10"}) as c:
            for key in st.units:
                unit_cluster(c, key)
    for u in g.units:
        if u.key not in staged:
            unit_cluster(dot, u.key)
    return placed


def _per_channel_layers(g: ModelGraph) -> set[str]:
    """Layers whose parameters only scale and shift the channels they pass through (the norms)."""
    kinds = {str(n.target): n.meta.get(OPKIND_META) for n in g.module.graph.nodes if n.op == "call_module"}
    return {name for name, kind in kinds.items() if kind in _NORMS}


def _graph_title(g: ModelGraph) -> str:
    frozen = sum(1 for grp in g.groups if grp.frozen)
    return f"{g.name}: {len(g.groups)} groups, {len(g.groups) - frozen} permutable, {frozen} frozen (grey)"


def _layers_in_call_order(g: ModelGraph, nx_graph: Any) -> list[str]:
    layers = {n[1] for n in nx_graph.nodes if n[0] == "layer"}
    order = [str(n.target) for n in g.module.graph.nodes if n.op in ("call_module", "get_attr")]
    seen = [name for name in dict.fromkeys(order) if name in layers]
    return seen + sorted(layers - set(seen))


def _layer_class(g: ModelGraph, layer: str) -> str:
    try:
        return type(g.module.get_submodule(layer)).__name__
    except AttributeError:
        return "tensor"


def _layer_tooltip(g: ModelGraph, layer: str) -> str:
    shapes = [f"{name}: {tuple(t.shape)}" for name, t in g.params.items() if owner_of(name) == layer or name == layer]
    return "\n".join(shapes) or layer


def _group_label(grp: PermGroup) -> str:
    blocks = f"\n{grp.structure.count}x{grp.structure.size}" if grp.structure.count > 1 else ""
    frozen = "\nfrozen" if grp.frozen else ""
    return f"g{grp.id} · {grp.size}{blocks}{frozen}"


def _group_tooltip(grp: PermGroup) -> str:
    if grp.frozen:
        return f"frozen: {grp.frozen}"
    admits = ", ".join(w for w, ok in (("permute", grp.perm_ok), ("pad", grp.pad_ok), ("zip", grp.zip_ok)) if ok)
    return f"{grp.label}: {grp.size} channels, {len(grp.slots)} slots; admits {admits}"


def _node_id(node: tuple[str, object]) -> str:
    return f"{node[0]} {node[1]}"  # never a colon: DOT reads "a:b" as node a, port b


def _darker(hex_colour: str, factor: float = 0.6) -> str:
    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{int(c * factor):02x}" for c in rgb)


# -- WidthPlan ----------------------------------------------------------------------------------------------

def width_plan_dot(plan: WidthPlan, group: int | None = None, names: Sequence[str] | None = None) -> graphviz.Digraph:
    """One group of a width plan: a column of neurons per model and the merged neurons in the middle.

    An edge joins neuron ``j`` of model ``k`` to merged neuron ``i`` when ``M_k[i, j]`` is not zero; its
    thickness is the weight (edges under 1% of the merged neuron's largest weight are left out). Even
    models stand left of the merged column, odd ones right. ``group`` defaults to the first group.
    """
    import graphviz

    gid = next(iter(plan.groups)) if group is None else group
    if gid not in plan.groups:
        raise InputError(f"the plan has no group {gid}; it has {', '.join(map(str, plan.groups))}")
    match = plan.groups[gid]
    merges = match.merge
    labels = list(names) if names is not None else [f"model {k}" for k in range(len(merges))]
    if len(labels) != len(merges):
        raise InputError(f"{len(labels)} names for a plan of {len(merges)} models; give one name per model")
    dot = graphviz.Digraph(f"plan_group_{gid}", graph_attr={
        "rankdir": "LR", "ranksep": "1.6", "nodesep": "0.05", "fontname": "Helvetica", "labelloc": "t",
        "label": _plan_title(plan, match, labels)}, node_attr={"fontname": "Helvetica", "fontsize": "9",
                                                              "shape": "circle", "width": "0.3", "fixedsize": "true"})
    _column(dot, "merged", "merged", match.size, "#444444", "#ffffff")
    for k, label in enumerate(labels):
        _column(dot, f"m{k}", label, merges[k].shape[1], MODEL_COLOURS[k % len(MODEL_COLOURS)], "#ffffff")
    for k, m in enumerate(merges):
        colour = MODEL_COLOURS[k % len(MODEL_COLOURS)]
        for i, row in enumerate(m.abs()):
            top = float(row.max()) if row.numel() else 0.0
            for j in row.nonzero().flatten().tolist():
                w = float(row[j]) / top if top else 0.0
                if w < HIDDEN_BELOW:
                    continue
                attrs = {"color": colour, "penwidth": f"{0.4 + 1.6 * w:.2f}", "arrowhead": "none",
                         "tooltip": f"{labels[k]} neuron {j} -> merged {i}: {float(m[i, j]):.3g}"}
                if k % 2 == 0:
                    dot.edge(f"m{k}_{j}", f"merged_{i}", **attrs)
                else:  # drawn from the merged column so that the model stands on the right
                    dot.edge(f"merged_{i}", f"m{k}_{j}", **attrs)
    return dot


def _plan_title(plan: WidthPlan, match: GroupMatch, labels: Sequence[str]) -> str:
    widths = " + ".join(f"{label} {m.shape[1]}" for label, m in zip(labels, match.merge, strict=True))
    kind = str(match.kind or plan.method)
    how = plan.method if kind == plan.method else f"{plan.method} ({kind})"
    return f"group {match.group}: {how}, {widths} -> merged {match.size}"


def _column(dot: graphviz.Digraph, prefix: str, label: str, n: int, colour: str, fill: str) -> None:
    with dot.subgraph(name=f"cluster_{prefix}") as sub:
        sub.attr(label=label, color=colour, fontcolor=colour, style="rounded")
        for i in range(n):
            sub.node(f"{prefix}_{i}", str(i), color=colour, style="filled", fillcolor=fill)


BUILDERS: Mapping[type, Callable[..., graphviz.Digraph]] = {ModelGraph: graph_dot, WidthPlan: width_plan_dot,
                                                             DepthPlan: depth_plan_dot}
