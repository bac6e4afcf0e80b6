"""Statistics of every pairing a plan might choose, gathered before it is chosen.

A depth merge reads the first calibration samples to decide which unit of one model stands where in the other
(``merging.similarity``); the width statistics then need, per group, the joint moments of the two models'
features at the group's sites, and which feature of the shallower model sits at a site depends on that decision.
So while the similarity pass runs, every *candidate* pair of sites is accumulated: each site's own moments once
(``BlockAccumulator`` of one model), and the cross-moment of every pair of sites the plan could put together.
Once the plan is made, the pairs it chose are joined into each group's accumulator (``joined``, then Chan's
update across the group's sites, ``plan.distributed.combined``), which the statistics pass then continues on the
remaining samples: the samples the similarity pass read are not run again.

>>> import torch
>>> from hetsurgery.ir import Site
>>> a, b = View(0, Site("x", 1), 3), View(1, Site("y", 1), 2)
>>> cands = Candidates([a, b], [(a, b)], full=True)
>>> x, y = torch.randn(40, 3), torch.randn(40, 2)
>>> for rows in (slice(0, 16), slice(16, 40)):
...     cands.add({0: {"x": x[rows]}, 1: {"y": y[rows]}})
>>> acc = cands.accumulator([(a, b)], anchor_first=True)
>>> whole = BlockAccumulator([3, 2], full=True)
>>> whole.add([x.unsqueeze(2), y.unsqueeze(2)])
>>> bool(torch.allclose(acc.covariance(), whole.covariance(), atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from hetsurgery.ir import Site
from hetsurgery.plan.accumulate import BlockAccumulator, Scratch, fold_product
from hetsurgery.plan.distributed import combined, state
from hetsurgery.plan.joint import site_view


@dataclass(frozen=True)
class View:
    """The features of ``model`` at one site, ``width`` channels wide."""

    model: int
    site: Site
    width: int


class Candidates:
    """Each view's own moments and the cross-moments of ``pairs`` (an anchor's view, another model's view), over
    the same batches. Feed every batch with ``add`` (each model's outputs by node name); read one group's joined
    accumulator with ``accumulator``."""

    def __init__(self, views: Sequence[View], pairs: Sequence[tuple[View, View]], full: bool,
                 grams: Sequence[View] = ()) -> None:
        self.full = full
        self.scratch = Scratch()
        whole = set(grams)  # views whose own second moments are kept whole even without ``full`` (for ``cka``)
        self.selves = {v: BlockAccumulator([v.width], full or v in whole, self.scratch) for v in dict.fromkeys(views)}
        self.cross = {p: torch.zeros(p[0].width, p[1].width, dtype=torch.float64) for p in dict.fromkeys(pairs)}
        self.partners: dict[View, list[View]] = {}
        for a, b in self.cross:
            self.partners.setdefault(a, []).append(b)
        # the views that meet, in connected parts: each part's other views are centred together, its anchor's views
        # one at a time
        root = {v: v for v in self.selves}

        def find(v: View) -> View:
            while root[v] != v:
                root[v] = root[root[v]]
                v = root[v]
            return v

        for a, b in self.cross:
            root[find(a)] = find(b)
        parts: dict[View, tuple[list[View], list[View]]] = {}
        others = {b for _, b in self.cross}
        for v in self.selves:
            parts.setdefault(find(v), ([], []))[v in others].append(v)
        self.parts = list(parts.values())

    def nodes(self, model: int) -> list[str]:
        """The nodes of ``model`` whose outputs ``add`` reads."""
        return list(dict.fromkeys(v.site.node for v in self.selves if v.model == model))

    def add(self, outs: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """One batch: ``outs[model][node]`` is the node's output."""
        views = {v: site_view(outs[v.model][v.site.node], v.site, v.width) for v in self.selves}
        if not views or next(iter(views.values())).numel() == 0:
            return
        for anchors, others in self.parts:  # one part at a time: only its other views' copies at once
            ready = {b: self.selves[b].centre([views[b]], [slot]) for slot, b in enumerate(others, start=1)}
            for v in anchors:
                acc = self.selves[v]
                (x,), (mean,) = acc.centre([views[v]], [0])
                for b in self.partners.get(v, ()):
                    (y,), (mean_b,) = ready[b]
                    other = self.selves[b]
                    fold_product(self.cross[(v, b)], x, y, mean, mean_b, mean - acc.mean[0], mean_b - other.mean[0],
                                 acc.n, _samples(views[v]), self.scratch)
                acc.fold([views[v]], [x], [mean])
            for b, ((y,), (mean_b,)) in ready.items():
                self.selves[b].fold([views[b]], [y], [mean_b])

    def has(self, a: View, b: View) -> bool:
        return (a, b) in self.cross

    def cka(self, a: View, b: View) -> float:
        """Linear CKA of the two views' features over the samples seen, ``‖C_abᵀ‖²_F / (‖C_aa‖_F ‖C_bb‖_F)`` on the
        centred second moments (``plan.depth.cka``'s feature-space form); a feature that took one value adds nothing,
        and a view without variance has CKA 0 with everything. ``a``'s and ``b``'s own moments must be whole
        (``grams``)."""
        sa, sb = self.selves[a], self.selves[b]
        const_a, const_b = sa.low[0] == sa.high[0], sb.low[0] == sb.high[0]
        cross = self.cross[(a, b)].clone()
        cross[const_a, :] = 0.0
        cross[:, const_b] = 0.0
        norms = []
        for acc, const in ((sa, const_a), (sb, const_b)):
            gram = acc.m2[(0, 0)].clone()
            gram[const, :] = 0.0
            gram[:, const] = 0.0
            norms.append(float(torch.linalg.norm(gram)))
        denom = norms[0] * norms[1]
        return float(cross.square().sum()) / denom if denom > 0 else 0.0

    def accumulator(self, sites: Sequence[tuple[View, View]], *, anchor_first: bool) -> BlockAccumulator:
        """The two-model accumulator of a group whose sites pair these views (each an anchor's view and the other
        model's), the anchor's columns first when ``anchor_first``; it may go on taking batches (``add``), each
        model's features shifted by its first site's reference."""
        states = [state(self.joined(a, b, anchor_first)) for a, b in sites]
        a, b = sites[0]
        widths = [a.width, b.width] if anchor_first else [b.width, a.width]
        out = combined(states, widths, self.full)
        shift_a, shift_b = self.selves[a].shift, self.selves[b].shift
        if out.n and shift_a is not None and shift_b is not None:
            out.shift = [shift_a[0], shift_b[0]] if anchor_first else [shift_b[0], shift_a[0]]
            out.mean = [m - s.double() for m, s in zip(out.mean, out.shift, strict=True)]
        return out

    def joined(self, a: View, b: View, anchor_first: bool) -> BlockAccumulator:
        """The accumulator of one site pair, as if the two views had been fed together."""
        sa, sb = self.selves[a], self.selves[b]
        first, second = (sa, sb) if anchor_first else (sb, sa)
        cross = self.cross[(a, b)] if anchor_first else self.cross[(a, b)].T
        out = BlockAccumulator([first.widths[0], second.widths[0]], self.full)
        out.n = sa.n
        out.shift = None if first.shift is None or second.shift is None else [first.shift[0], second.shift[0]]
        out.mean = [first.mean[0].clone(), second.mean[0].clone()]
        out.var = [first.var[0].clone(), second.var[0].clone()]
        out.m2 = {(0, 1): cross.clone()}
        if self.full:
            out.m2[(0, 0)], out.m2[(1, 1)] = first.m2[(0, 0)].clone(), second.m2[(0, 0)].clone()
        out.low, out.high = [first.low[0], second.low[0]], [first.high[0], second.high[0]]
        out.tracking = [first.tracking[0], second.tracking[0]]
        return out


def _samples(view: torch.Tensor) -> int:
    return view.shape[0] * view.shape[2]
