"""Attention layers with different numbers of heads of one size (8 heads with 12): which merges allow it, and whose
layout the merged model takes.

Heads are zipped as units (``plan.solvers.head_cluster``): the merged layer has a whole number of heads, each made
from whole heads of the models. A model's forward often spells its head count as a number (``view(b, t, 8, 64)``);
the merged model is one of the models with its tensors replaced, so it must be a model that already has the merged
head count in every layer whose count changes: that model is the merged model's layout (the plan's anchor). With
the default width (zip: the widest) that is the model with the most heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import Blocks, ModelGraph


def head_count_change(sa: Blocks, sb: Blocks) -> bool:
    """``sa`` and ``sb`` are attention heads of one size, their counts different, whole heads free to move in both."""
    return sa.count != sb.count and sa.size == sb.size and sa.moves and sb.moves and min(sa.count, sb.count) >= 1


def changing_heads(graphs: Sequence[ModelGraph], targets: Mapping[int, int]) -> list[int]:
    """The groups of moving heads whose head count differs between the models or from the target."""
    out = []
    for grp in graphs[0].permutable():
        structures = [g.group(grp.id).structure for g in graphs]
        if not all(s.moves and s.count > 1 for s in structures):
            continue
        if len({s.count for s in structures}) > 1:
            out.append(grp.id)
        elif len({s.size for s in structures}) == 1 and targets[grp.id] != structures[0].total:
            out.append(grp.id)  # one count and size in the models, another count asked for
        # (one count, sizes different: heads that change width, not count; the width checks say whether they can)
    return out


def layout_model(graphs: Sequence[ModelGraph], targets: Mapping[int, int], method: str, anchor: int) -> int | None:
    """The model whose layout the merged model takes when head counts change (``anchor`` when it will do), ``None``
    when none do; ``MergeInputError`` when the merge cannot change them."""
    changing = changing_heads(graphs, targets)
    if not changing:
        return None
    first = graphs[0].group(changing[0])
    counts = "/".join(str(g.group(first.id).structure.count) for g in graphs)
    if method != "zip":
        raise MergeInputError(f"group {first.id} ({first.label}) has {counts} heads in the models: heads of "
                              f"different counts merge with method 'zip' (heads zipped as units), not {method!r}")
    fits = set(range(len(graphs)))
    for gid in changing:
        grp = graphs[0].group(gid)
        size = grp.structure.size
        if targets[gid] % size:
            raise MergeInputError(f"group {gid} ({grp.label}): width {targets[gid]} is not a whole number of heads of "
                                  f"{size}")
        for other in grp.heads_with:
            if other in targets and targets[other] // graphs[0].group(other).structure.size != targets[gid] // size:
                raise MergeInputError(f"groups {gid} and {other} are the two sides of the same heads; give them the "
                                      "same number of heads")
        if any(g.group(gid).structure.size != size for g in graphs):
            raise MergeInputError(f"group {gid} ({grp.label}) has heads of sizes "
                                  f"{'/'.join(str(g.group(gid).structure.size) for g in graphs)}: heads of different "
                                  "sizes do not merge")
        if not all(s.packed for g in graphs for s in g.group(gid).slots):
            raise MergeInputError(f"group {gid} ({grp.label}) has "
                                  f"{'/'.join(str(g.group(gid).structure.count) for g in graphs)} heads in the models, laid out between other "
                                  "channels (grouped-query attention's query heads over their key heads): its head "
                                  "count cannot change yet; merge models with the same number of key/value heads")
        fits &= {k for k, g in enumerate(graphs) if g.group(gid).size == targets[gid]}
    if not fits:
        raise MergeInputError(f"no model has the merged head count in every attention whose count changes (group "
                              f"{first.id}, {first.label}: {counts} heads, merged {targets[first.id] // first.structure.size}); "
                              "the merged model takes one model's layout: pick widths one model has")
    return anchor if anchor in fits else min(fits)
