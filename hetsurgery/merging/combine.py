"""Combine aligned models: ``W* = Σ_k M_k^out W_k U_k^in`` for every parameter (DESIGN.md §5).

The plan is realised by passes: model ``k``'s part of it is ``MapGroups.carrying(plan.groups, k)``, the pass
that carries its channels onto the merged ones with its weight folded into ``M_k``. The anchor is carried by a
``Pipeline`` (its structure, widths and groups become the merged graph's, verified, and the pass is in its
history); every other model is carried by the same pass one parameter at a time and added in, so besides the
result only one carried tensor is alive at once.

>>> import torch, hetsurgery as hs
>>> from hetsurgery.plan.width_plan import GroupMatch, WidthPlan
>>> gs = [hs.trace(hs.zoo.mlp([4]), torch.randn(2, 64)) for _ in range(2)]
>>> perms = [torch.arange(4), torch.tensor([1, 0, 3, 2])]
>>> plan = WidthPlan("permute", (0.5, 0.5), 0, {0: GroupMatch.from_perms(0, perms, (0.5, 0.5)),
...                                             1: GroupMatch.identity(1, (10, 10), (0.5, 0.5))})
>>> merged = combine(gs, plan)
>>> want = (gs[0].params["layers.0.weight"] + gs[1].params["layers.0.weight"][[1, 0, 3, 2]]) / 2
>>> torch.allclose(merged.params["layers.0.weight"], want), [p.name for p in merged.passes]
(True, ['map-groups'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hetsurgery.errors import MergeError
from hetsurgery.ir import ModelGraph, Role, SlotMaps, slots_by_param
from hetsurgery.passes import MapGroups, Pipeline
from hetsurgery.plan.width_plan import WidthPlan


def combine(graphs: Sequence[ModelGraph], plan: WidthPlan) -> ModelGraph:
    """The merged graph: the anchor's structure at the plan's widths, holding ``Σ_k`` of every model carried.
    Parameters with no produce-side slot are averaged with the plan's weights; integer buffers
    (``num_batches_tracked``) are copies of the first model's."""
    c = Combination.of(graphs, plan)
    merged = Pipeline((c.carry[c.anchor],))(graphs[c.anchor])
    out = {}
    for name in graphs[0].params:
        def carried(k: int, name: str = name) -> torch.Tensor:
            return merged.params[name] if k == c.anchor else c.carry[k].parameter(graphs[k], name, c.maps[k])

        def own(k: int, name: str = name) -> torch.Tensor:
            return graphs[k].params[name]

        out[name] = c.parameter(name, carried, own)
    return merged.with_updates(out)


class Combination:
    """How each merged tensor is made from the models': model ``k``'s tensor carried by its part of the plan
    (``carry[k]``, with ``maps[k]``), weighted unless the weight is already folded into its produce-side map, and
    summed, the anchor first. ``combine`` applies it to graphs in memory; a streamed merge applies it one tensor
    (or one piece of a tensor) at a time as it reads them (``hetsurgery.stream``)."""

    def __init__(self, carry: Sequence[MapGroups], produced: Sequence[set[str]], weights: Sequence[float],
                 anchor: int) -> None:
        self.carry, self.produced, self.weights, self.anchor = list(carry), list(produced), list(weights), anchor
        self.maps: list[SlotMaps] = [c._slot_maps() for c in self.carry]

    @staticmethod
    def of(graphs: Sequence[ModelGraph], plan: WidthPlan) -> Combination:
        for name, slots in slots_by_param(graphs[0].groups).items():
            dims = {s.dim for _, s in slots if s.role is Role.PRODUCE}
            if len(dims) > 1:
                raise MergeError(f"{graphs[0].name}: {name} has produce-side channels on dims {sorted(dims)}; "
                                 "the merge weights would be applied twice")
        produced = [{name for name, slots in slots_by_param(g.groups).items()
                     if any(s.role is Role.PRODUCE for _, s in slots)} for g in graphs]
        return Combination([MapGroups.carrying(plan.groups, k) for k in range(len(graphs))], produced, plan.weights,
                           plan.anchor)

    def parameter(self, name: str, carried: Callable[[int], torch.Tensor], own: Callable[[int], torch.Tensor]
                  ) -> torch.Tensor:
        """The merged ``name`` from ``carried(k)`` (model ``k``'s tensor carried) and ``own(k)`` (its tensor as it is:
        never written into)."""
        first = own(0)
        if not first.is_floating_point():
            return first.clone()  # the merged model owns it: training it never counts in a user's model
        total = None
        for k in [self.anchor, *(k for k in range(len(self.carry)) if k != self.anchor)]:
            t = carried(k)
            fresh = t is not own(k)  # never write into a model's own tensor
            weight = 1.0 if name in self.produced[k] else self.weights[k]
            if total is None:
                total = t if fresh else t.clone()
                if weight != 1.0:
                    total.mul_(weight)
            else:
                total.add_(t, alpha=weight)
            del t  # freed before the next model's copy is made
        assert total is not None
        return total
