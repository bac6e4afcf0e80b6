"""Combine aligned models: ``W* = Σ_k M_k^out W_k U_k^in`` for every parameter (DESIGN.md §5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.errors import MergeError
from hetsurgery.ir import ModelGraph, Role, SlotMaps, slots_by_param, transform_params
from hetsurgery.plan.width_plan import WidthPlan


def combine(graphs: Sequence[ModelGraph], plan: WidthPlan) -> dict[str, torch.Tensor]:
    """The merged parameters. Parameters with no produce-side slot are averaged with the plan's weights.

    Works one parameter at a time, so besides the result only one aligned tensor is alive at once.
    Integer buffers (``num_batches_tracked``) are copies of the first model's.
    """
    for name, slots in slots_by_param(graphs[0].groups).items():
        dims = {s.dim for _, s in slots if s.role is Role.PRODUCE}
        if len(dims) > 1:
            raise MergeError(f"{graphs[0].name}: {name} has produce-side channels on dims {sorted(dims)}; "
                             "the merge weights would be applied twice")
    maps = [SlotMaps.of(plan.groups, k) for k in range(len(graphs))]
    by_param = [slots_by_param(g.groups) for g in graphs]  # each model's own offsets (concat layouts)
    out: dict[str, torch.Tensor] = {}
    for name, first in graphs[0].params.items():
        if not first.is_floating_point():
            out[name] = first.clone()  # the merged model owns it: training it never counts in a user's model
            continue
        total = None
        for k, g in enumerate(graphs):
            t = transform_params(g.params, by_param[k], maps[k], names=[name])[name]
            fresh = t is not g.params[name]  # never write into a model's own tensor
            weight = 1.0 if any(s.role is Role.PRODUCE for _, s in by_param[k].get(name, ())) else plan.weights[k]
            if total is None:
                total = t if fresh else t.clone()
                if weight != 1.0:
                    total.mul_(weight)
            else:
                total.add_(t, alpha=weight)
            del t  # freed before the next model's copy is made
        assert total is not None
        out[name] = total
    return out
