"""``ResetBatchNorm``: recompute every BatchNorm's running statistics on calibration data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.ir.lowering import to_module
from hetsurgery.passes.base import Recorded


@dataclass(frozen=True, eq=False)
class ResetBatchNorm(Recorded):
    """Replace ``running_mean`` / ``running_var`` by the exact averages over ``data`` (momentum None),
    or over its first ``max_samples`` examples.

    Only BatchNorm layers run in training mode, under ``torch.no_grad``; dropout stays off. Merged
    variances are never trusted (REPAIR, ZipIt!): after a merge they are recomputed by construction.

    Before: ``bn.running_var = [0.1, 9.0]`` (stale).  After: the variance of the features over ``data``.
    """

    data: Iterable = field(repr=False)
    max_samples: int | None = None
    device: torch.device | str | None = None  # where to run; the statistics come back to the graph's device
    name: ClassVar[str] = "reset-batchnorm"
    exact: ClassVar[bool] = False

    def recorded(self) -> ResetBatchNorm:
        """The history keeps how many samples were used, not the calibration data itself."""
        return replace(self, data=())

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        model = to_module(g, share=True).eval()  # weights are only read; statistics get fresh tensors below
        bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats}
        if not bns:
            return g
        for m in bns.values():
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(m, buf) is not None:
                    setattr(m, buf, getattr(m, buf).clone())
            m.reset_running_stats()
            m.momentum = None
            m.train()
        home = next(iter(g.params.values())).device
        if self.device is not None:
            model.to(self.device)
        run_on = self.device if self.device is not None else home
        seen = 0
        with torch.no_grad():
            for batch in self.data:
                x = model_input(batch, input_names(model))
                if self.max_samples is not None:
                    if seen >= self.max_samples:
                        break
                    x = x[:self.max_samples - seen]
                    if seen and x.samples == 1:  # one sample alone is no batch to a BatchNorm1d: leave it out
                        break
                model(*x.to(run_on))
                seen += x.samples
        if seen == 0:
            raise PassError(f"{g.name}: ResetBatchNorm got no calibration batches")
        updates = {}
        for name, m in bns.items():
            for buf in ("running_mean", "running_var"):
                t = getattr(m, buf)
                if t is not None:
                    updates[f"{name}.{buf}"] = t.detach().to(home)
        return g.with_updates({k: v for k, v in updates.items() if k in g.params})
