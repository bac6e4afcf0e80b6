"""``method="zip"``: ZipIt! on every group, with what transformers need.

* **LayerNorm'd residual streams.** ZipIt!'s greedy merges features inside one model too; on a stream that
  LayerNorms read, the merged channels are then renormalised over a different set of channels than either
  model's. Where every norm over the stream folds into its readers (``passes.FoldNorms``, applied by
  ``prepare_zip`` before the statistics, exact) and only those norms read the stream, it is zipped onto the
  principal directions of the models' centred features (``solvers.stream``): any map that keeps the all-ones
  direction is then allowed, and the merged stream keeps every model's stream where its variance lies. A
  stream that norms read but that cannot be folded (post-norm blocks, BERT: the norm's output is the stream)
  is matched across models only (``beta=0``: one to one where the widths are equal, a permutation, which every
  normalisation commutes with).
* **Heads** are matched as units on their outputs (``solvers.heads``), then the value/output side of each matched
  set of heads is zipped inside it (``solvers.head_zip``: the attention is linear in the values, so ZipIt!'s
  merges apply), the query/key side matched channel by channel (``permute``: ``q kᵀ`` is bilinear). On the
  digits ViT pair (bench ``depth_transformer``) zipping inside heads took homogeneous zip + REPAIR from 42.2 to
  44.6 joint, matching heads on their outputs to 48.6.
* **Silent features.** A model's group whose every reader has zero weights (the inner channels of a
  zero-residual block that depth balancing inserted: its output projections are zero) computes nothing the
  model uses; it takes no part in that group's merge (weight 0 there), so the merged block is the other
  models' block, not half of it averaged with a copy of a neighbour.

Everything else is ``solvers.zip``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from hetsurgery.ir import ModelGraph, OpKind, Role
from hetsurgery.ir.slot_algebra import slot_rows
from hetsurgery.merging.head_counts import changing_heads
from hetsurgery.passes import Pipeline
from hetsurgery.passes.fold_norms import FoldNorms, folded, stream_report
from hetsurgery.plan.signature import joint_signature
from hetsurgery.plan.solvers.head_cluster import clustered_heads, head_clusters
from hetsurgery.plan.solvers.head_zip import head_zip
from hetsurgery.plan.solvers.heads import tie_classes
from hetsurgery.plan.solvers.permute import permute, stats_head_orders
from hetsurgery.plan.solvers.stream import stream_match
from hetsurgery.plan.solvers.zip import zip_match
from hetsurgery.plan.stats import GroupStats
from hetsurgery.plan.width_plan import GroupMatch


def prepare_zip(graphs: Sequence[ModelGraph]) -> tuple[ModelGraph, ...]:
    """The models with the norms of every LayerNorm'd stream that all of them can zip folded into the readers
    (``FoldNorms``, exact): ``plan_zip`` zips those streams by their principal directions."""
    reports = [stream_report(g) for g in graphs]
    ready = tuple(sorted(gid for gid in reports[0] if all(r.get(gid, "no norm") is None for r in reports)))
    return tuple(Pipeline((FoldNorms(ready),))(g) for g in graphs) if ready else tuple(graphs)


def zipped_streams(graphs: Sequence[ModelGraph]) -> set[int]:
    """The groups ``plan_zip`` zips as LayerNorm'd streams: ready in every model (``stream_report``) and folded."""
    reports = [stream_report(g) for g in graphs]
    return {gid for gid in reports[0] if all(r.get(gid, "no norm") is None for r in reports)
            and all(folded(g, gid) for g in graphs)}


def normalised_groups(g: ModelGraph) -> set[int]:
    """The groups some node normalises over their channels: a LayerNorm or RMSNorm, or a mean over the channels
    (an RMSNorm written out, as torch.export gives it)."""
    out: set[int] = set()
    for f in g.facts.values():
        if f.kind is OpKind.LAYER_NORM:
            out.update(f.writes)
        elif f.kind is OpKind.REDUCE:
            out.update(gid for gid in f.reads if gid not in f.writes)
    return out


def silent_groups(g: ModelGraph) -> set[int]:
    """The permutable groups that every reader reads with zero weights (and the heads tied to them): features
    the model computes and never uses."""
    out = set()
    for grp in g.permutable():
        readers = grp.slots_with(Role.CONSUME)
        if any(g.params[s.param].is_meta for s in readers):  # a streamed model's weights are read later: not known
            continue
        try:
            if readers and all(bool((slot_rows(g.params[s.param], s, grp.size) == 0).all()) for s in readers):
                out.add(grp.id)
        except ValueError:  # a block-diagonal slot has no rows of its own: not asked
            continue
    return out | {grp.id for grp in g.permutable() if any(h in out for h in grp.heads_with)}


def group_weights(graphs: Sequence[ModelGraph], weights: Sequence[float]) -> dict[int, tuple[float, ...]]:
    """Per group, the models' weights with a model's weight 0 where the group is silent in it (renormalised);
    the plain weights where it is silent in every model that has weight."""
    silent = [silent_groups(g) for g in graphs]
    out = {}
    for grp in graphs[0].permutable():
        live = [0.0 if grp.id in silent[k] else w for k, w in enumerate(weights)]
        total = sum(live)
        out[grp.id] = tuple(w / total * sum(weights) for w in live) if total > 0 else tuple(weights)
    return out


def plan_zip(graphs: Sequence[ModelGraph], stats: Mapping[int, GroupStats] | None, weights: Sequence[float],
             anchor: int, targets: Mapping[int, int], *, alpha: float = 0.5, beta: float = 1.0
             ) -> dict[int, GroupMatch]:
    """ZipIt! on every group (``alpha``, ``beta``: ``solvers.zip``), streams, heads and silent features as the
    module says."""
    assert stats is not None
    out = {}
    streams = zipped_streams(graphs)
    normalised = set.intersection(*(normalised_groups(g) for g in graphs))
    per_group = group_weights(graphs, weights)
    counted = _head_count_changes(graphs, stats, targets, per_group, weights, alpha, beta)
    out.update(counted)
    orders = stats_head_orders([g for g in graphs[0].permutable() if g.id not in counted], stats, anchor,
                               lambda gid: joint_signature(graphs, gid))
    for gid, s in stats.items():
        if gid in counted:
            continue
        blocks = graphs[0].group(gid).structure
        sig = joint_signature(graphs, gid)
        w = per_group.get(gid, tuple(weights))
        if blocks.count > 1 and gid in orders and _linear_heads(graphs[0], gid):
            out[gid] = head_zip(gid, s, blocks, w, orders[gid], signature=sig, alpha=alpha, beta=beta)
        elif blocks.count > 1:  # heads and grouped convs keep their blocks: match inside them instead
            m = permute(gid, s, blocks, w, anchor, sig, orders.get(gid))
            out[gid] = replace(m, info={**m.info, "note": "blocks: matched by permute"})
        elif gid in streams:
            out[gid] = stream_match(gid, s, w, width=targets[gid])
        elif gid in normalised:
            out[gid] = _across_models(gid, s, sig, w, targets[gid], alpha, beta)
        else:
            out[gid] = zip_match(gid, s.similarity(sig), s.widths, w, width=targets[gid], alpha=alpha, beta=beta)
    return out


def _head_count_changes(graphs: Sequence[ModelGraph], stats: Mapping[int, GroupStats], targets: Mapping[int, int],
                        per_group: Mapping[int, tuple[float, ...]], weights: Sequence[float], alpha: float,
                        beta: float) -> dict[int, GroupMatch]:
    """Heads of different counts (``merging.head_counts``): per class of tied groups, the heads of all models zipped
    into the merged count on the value/output side's similarity (every group's where no weight reads one), then each
    group's channels inside the merged heads (``solvers.head_cluster``)."""
    changing = set(changing_heads(graphs, targets))
    out: dict[int, GroupMatch] = {}
    for members in tie_classes(g for g in graphs[0].permutable() if g.id in changing and g.id in stats):
        ids = [g.id for g in members]
        size = members[0].structure.size
        outputs = [g.id for g in members if g.slots_with(Role.CONSUME)] or ids
        w = per_group.get(outputs[0], tuple(weights))
        counts = [d // size for d in stats[ids[0]].widths]
        scored = [(stats[gid].similarity(joint_signature(graphs, gid)), graphs[0].group(gid).structure.inner)
                  for gid in outputs]
        clusters = head_clusters(ids[0], scored, size, w, targets[ids[0]] // size, counts, alpha=alpha, beta=beta)
        for gid in ids:
            grp = graphs[0].group(gid)
            out[gid] = clustered_heads(gid, stats[gid], size, per_group.get(gid, tuple(weights)), clusters,
                                       zip_inside=_linear_heads(graphs[0], gid), inner=grp.structure.inner,
                                       signature=joint_signature(graphs, gid), alpha=alpha, beta=beta)
    return out


def _across_models(gid: int, s: GroupStats, sig: object, weights: Sequence[float], width: int, alpha: float,
                   beta: float) -> GroupMatch:
    """A normalised group that is not zipped as a stream: features merged across models only (no budget for
    merges inside one model), where the widths allow that; else ZipIt! as asked."""
    sim = s.similarity(sig)  # type: ignore[arg-type]
    try:
        m = zip_match(gid, sim, s.widths, weights, width=width, alpha=alpha, beta=0.0)
    except ValueError:
        return zip_match(gid, sim, s.widths, weights, width=width, alpha=alpha, beta=beta)
    return replace(m, info={**m.info, "note": "normalised: merged across models only"})


def _linear_heads(g: ModelGraph, gid: int) -> bool:
    """Heads whose channels every reader takes linearly (a layer's weight consumes them: the value/output side of
    an attention) and whose order inside a head is free; the query/key side has no consuming weight (``q kᵀ``)."""
    grp = g.group(gid)
    return grp.structure.moves and grp.structure.inner and bool(grp.slots_with(Role.CONSUME))
