"""Linear assignment inside blocks: ``scipy.optimize.linear_sum_assignment(maximize=True)`` per block.

With ``Blocks(moves=True)`` and a head ``order`` (``solvers.heads``) block ``i`` is matched with block
``order[i]`` of the other model; ``inner=False`` keeps the channels inside each block in order.

>>> import torch
>>> best_permutation(torch.tensor([[0., 1.], [1., 0.]]), block=2).tolist()
[1, 0]
>>> from hetsurgery.ir import Blocks
>>> best_permutation(torch.eye(4)[[2, 3, 0, 1]], Blocks(2, 2, moves=True), torch.tensor([1, 0])).tolist()
[2, 3, 0, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hetsurgery.ir import Blocks


def best_permutation(score: torch.Tensor, block: int | Blocks, order: torch.Tensor | None = None) -> torch.Tensor:
    """``perm`` maximising ``Σ_i score[i, perm[i]]`` with ``perm`` mapping block ``i`` onto block ``order[i]``
    (each onto itself without an order, or when blocks may not move)."""
    d = score.shape[0]
    blocks = block if isinstance(block, Blocks) else Blocks(d // block, block)
    size = blocks.size
    s = score.detach().double().cpu().numpy()
    heads = order.tolist() if order is not None and blocks.moves else list(range(blocks.count))
    perm = np.empty(d, dtype=np.int64)
    for i, j in enumerate(heads):
        lo, at = i * size, j * size
        if blocks.inner:
            _, cols = _maximise(s[lo:lo + size, at:at + size])
        else:
            cols = np.arange(size)
        perm[lo:lo + size] = at + cols
    return torch.from_numpy(perm)


def _maximise(s: np.ndarray) -> Any:
    """``linear_sum_assignment(s, maximize=True)`` without the negated copy scipy makes for it (5632 channels:
    254 MB): ``s`` is negated in place, solved for the minimum and negated back (exact: a sign flip), so the caller's
    matrix is as it was."""
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs 0.4 s to import: on first use

    if not s.flags.writeable or s.dtype != np.float64:
        return linear_sum_assignment(s, maximize=True)
    np.negative(s, out=s)
    try:
        return linear_sum_assignment(s)
    finally:
        np.negative(s, out=s)


def assignment_value(score: torch.Tensor, perm: torch.Tensor) -> float:
    return score[torch.arange(perm.numel()), perm].sum().item()
