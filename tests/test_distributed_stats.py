"""Statistics across processes equal one process's: ``torchrun --nproc-per-node 2`` (gloo) on a tiny model, each rank
streaming its share of the batches (``tests/distributed_stats.py``), against the same statistics in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.distributed_stats import measured

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_statistics_equal_single_process_statistics(tmp_path: Path) -> None:
    out = tmp_path / "stats.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", str(ROOT / "tests" / "distributed_stats.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(out)
    ours = measured()
    assert theirs["world"] == 2
    for gid, (count, mean, cov) in ours["stats"].items():
        n, m, c = theirs["stats"][gid]
        assert n == count
        assert float((m - mean).norm() / mean.norm()) <= 1e-6
        assert float((c - cov).norm() / cov.norm()) <= 1e-6
    for gid, maps in ours["perms"].items():
        assert all(_same_map(a, b) for a, b in zip(maps, theirs["perms"][gid], strict=True))


def _same_map(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return torch.equal(a[0], b[0]) and a[1] == b[1]
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
