"""Run under torchrun by ``tests/test_distributed_stats.py``: statistics and a merge plan with ``distributed=True``;
rank 0 saves them to the file named by the first argument (``python -m torch.distributed.run --nproc-per-node 2
tests/distributed_stats.py OUT``)."""

from __future__ import annotations

import sys

import torch

import hetsurgery as hs
from hetsurgery.plan.distributed import join
from hetsurgery.plan.stats import collect_stats


def models_and_data() -> tuple[list[torch.nn.Module], list[torch.Tensor]]:
    torch.manual_seed(0)
    models = [hs.zoo.mlp([16, 12]).eval(), hs.zoo.mlp([16, 12]).eval()]
    gen = torch.Generator().manual_seed(1)
    return models, [torch.randn(10, 64, generator=gen) for _ in range(5)]  # 3 batches on rank 0, 2 on rank 1


def measured(world: object = None) -> dict[str, object]:
    models, data = models_and_data()
    graphs = [hs.trace(m, data[0][:2]) for m in models]
    stats = collect_stats(graphs, data, progress=False, world=world)  # type: ignore[arg-type]
    plan = hs.merge(models, data, method="permute", progress=False, reset_bn=False,
                    distributed=world is not None).plan
    return {"stats": {gid: (s.count, s.mean, s.cov) for gid, s in stats.items()},
            "perms": {gid: [m.produce_map(k) for k in range(2)] for gid, m in plan.groups.items()}}


if __name__ == "__main__":
    world = join(True)
    result = measured(world)
    if world.leader:
        torch.save({"world": world.size, **result}, sys.argv[1])
