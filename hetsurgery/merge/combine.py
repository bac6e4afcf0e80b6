"""Combine aligned models: ``W* = Σ_k M_k^out W_k U_k^in`` for every parameter (DESIGN.md §5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.errors import MergeError
from hetsurgery.ir import ModelGraph, Role
from hetsurgery.plan.apply import SlotMaps, slots_by_param, transform_params
from hetsurgery.plan.width_plan import WidthPlan


def combine(graphs: Sequence[ModelGraph], plan: WidthPlan) -> dict[str, torch.Tensor]:
    """The merged parameters. Parameters with no produce-side slot are averaged with the plan's weights.

    Integer buffers (``num_batches_tracked``) come from the first model.
    """
    for name, slots in slots_by_param(graphs[0].groups).items():
        dims = {s.dim for _, s in slots if s.role is Role.PRODUCE}
        if len(dims) > 1:
            raise MergeError(f"{graphs[0].name}: {name} has produce-side channels on dims {sorted(dims)}; "
                             "the merge weights would be applied twice")
    out: dict[str, torch.Tensor] = {}
    for k, g in enumerate(graphs):
        maps = SlotMaps({gid: m.merge[k] for gid, m in plan.groups.items()},
                        {gid: m.unmerge[k].T for gid, m in plan.groups.items()})
        by_param = slots_by_param(g.groups)  # this model's own offsets: concat layouts follow its widths
        aligned = transform_params(g.params, by_param, maps, names=g.params)
        for name, t in aligned.items():
            if not t.is_floating_point():
                out.setdefault(name, t)
                continue
            if not any(s.role is Role.PRODUCE for _, s in by_param.get(name, ())):
                t = t * plan.weights[k]
            out[name] = t if k == 0 else out[name] + t
    return out
