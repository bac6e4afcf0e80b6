"""Test session setup: one torch thread per pytest-xdist worker (two workers on two cores would otherwise
oversubscribe the cores and spin against each other), inherited by the tutorials' subprocesses."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global random state, whichever tests ran before it on its worker."""
    torch.manual_seed(0)
