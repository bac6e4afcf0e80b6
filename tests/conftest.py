"""Test session setup: one torch thread per pytest-xdist worker (two workers on two cores would otherwise
oversubscribe the cores and spin against each other), inherited by the tutorials' subprocesses."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
