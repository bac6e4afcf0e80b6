"""Pictures of a ``DepthPlan``: the units of two models side by side, and the CKA matrices as heatmaps.

``depth_plan_dot`` draws, stage by stage, the shallower model's units (left) and the anchor's (right), an
edge from each shallow unit to the deep unit it meets (labelled with its score), and what balancing does:
with ``add`` the units inserted into the shallower model (dashed, at the positions they take), with
``merge`` the anchor's units fused into one (a dashed box around them). ``cka_heatmap`` draws each stage
pair's score matrix with the chosen map marked (matplotlib).

>>> from hetsurgery.plan.depth import Balance, DepthMethod, DepthPlan, ModelDepth, align_stage
>>> st = align_stage("stage0", "stage0", ["a0", "a1"], ["b0", "b1", "b2"], [[0.9, 0.5, 0.1], [0.2, 0.4, 0.8]],
...                  DepthMethod.LMA, Balance.ADD)
>>> "inserted" in depth_plan_dot(DepthPlan(1, (ModelDepth(0, (st,)),))).source
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hetsurgery.errors import ExportError
from hetsurgery.export.atomic import atomic_file
from hetsurgery.export.errors import InputError
from hetsurgery.plan.depth import Balance, DepthPlan, ModelDepth, StageAlignment

if TYPE_CHECKING:  # imported where a picture is drawn, not by `import hetsurgery`
    import graphviz

SHALLOW, DEEP, INSERTED = "#1f78b4", "#e31a1c", "#d95f02"


def depth_plan_dot(plan: DepthPlan, model: int | None = None, names: Sequence[str] | None = None
                   ) -> graphviz.Digraph:
    """Model ``model``'s alignment with the anchor (default: the first model the plan aligns)."""
    import graphviz

    md = _model(plan, model)
    balance = md.stages[0].balance if md.stages else Balance.ADD
    shallow, deep = (md.model, plan.anchor) if balance is Balance.ADD else (plan.anchor, md.model)
    label = {k: (names[k] if names is not None and k < len(names) else f"model {k}") for k in (shallow, deep)}
    dot = graphviz.Digraph("depth plan", graph_attr={
        "rankdir": "LR", "fontname": "Helvetica", "labelloc": "t", "newrank": "true",
        "label": f"depth plan: {label[shallow]} (left) against {label[deep]} (right), balance {balance.value}"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box", "style": "rounded"})
    for s, st in reversed(list(enumerate(md.stages))):  # dot stacks clusters upwards: the first stage on top
        _stage(dot, s, st)
    return dot


def _stage(dot: graphviz.Digraph, s: int, st: StageAlignment) -> None:
    title = f"{st.stage_deep}: {st.method.value}, objective {st.objective:.3g}"
    with dot.subgraph(name=f"cluster_{s}", graph_attr={"label": title, "style": "rounded", "color": "#bdbdbd"}) as c:
        for j, unit in enumerate(st.units_deep):
            c.node(f"d{s}_{j}", unit, color=DEEP)
        fused = {j: f.shallow for f in st.fusions for j in f.deep} if st.balance is Balance.MERGE else {}
        for f in (st.fusions if st.balance is Balance.MERGE else ()):
            with c.subgraph(name=f"cluster_{s}_fused_{f.shallow}", graph_attr={
                    "label": "fused into one", "style": "dashed", "color": INSERTED, "fontcolor": INSERTED}) as box:
                for j in f.deep:
                    box.node(f"d{s}_{j}")
        for i, unit in enumerate(st.units_shallow):
            c.node(f"s{s}_{i}", unit, color=SHALLOW)
        lands = dict(enumerate(st.positions)) if st.balance is Balance.ADD else {}
        for i, j in enumerate(st.map):
            score = st.scores[i][j]
            c.edge(f"s{s}_{i}", f"d{s}_{j}", label=f"{score:.2f}", color="#333333")
            if st.balance is Balance.ADD and lands[i] != j:  # where the unit sits once balanced
                c.edge(f"s{s}_{i}", f"d{s}_{lands[i]}", style="dotted", color=SHALLOW, arrowhead="none")
        if st.balance is Balance.ADD:
            taken = set(st.positions)
            for j in range(len(st.units_deep)):
                if j not in taken:
                    c.node(f"i{s}_{j}", "inserted\n(identity)", style="dashed,rounded", color=INSERTED,
                           fontcolor=INSERTED)
                    c.edge(f"i{s}_{j}", f"d{s}_{j}", style="dashed", color=INSERTED, arrowhead="none")
        for j in fused:
            c.edge(f"s{s}_{fused[j]}", f"d{s}_{j}", style="dashed", color=INSERTED, arrowhead="none")


def _model(plan: DepthPlan, model: int | None) -> ModelDepth:
    if not plan.models:
        raise InputError("the depth plan aligns no model (one model only?)")
    if model is None:
        return plan.models[0]
    for md in plan.models:
        if md.model == model:
            return md
    raise InputError(f"the depth plan has no model {model}; it aligns models "
                     f"{', '.join(str(md.model) for md in plan.models)} to the anchor {plan.anchor}")


def cka_heatmap(plan: DepthPlan, path: str | os.PathLike[str], model: int | None = None) -> Path:
    """The score matrix of every stage pair of model ``model`` with its map marked, as a PNG or SVG file."""
    from matplotlib.figure import Figure  # a Figure of its own: the caller's backend stays

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise InputError(f"cannot draw the CKA heatmap to {path.name}: use a .png or .svg file name")
    md = _model(plan, model)
    fig = Figure(figsize=(3.2 * len(md.stages) + 0.6, 3.2))
    axes = fig.subplots(1, len(md.stages), squeeze=False)
    try:
        for ax, st in zip(axes[0], md.stages, strict=True):
            image = ax.imshow(st.scores, cmap="viridis", aspect="auto")
            ax.plot(list(st.map), list(range(len(st.map))), "w+", markersize=12, markeredgewidth=2)
            ax.set_title(f"{st.stage_deep}: {st.score.value} ({st.method.value})", fontsize=9)
            ax.set_xticks(range(len(st.units_deep)), st.units_deep, rotation=90, fontsize=6)
            ax.set_yticks(range(len(st.units_shallow)), st.units_shallow, fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    except ValueError as exc:
        raise ExportError(f"drawing the CKA heatmap failed: {exc}") from exc
    return path
