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

import numpy as np
import torch

from hetsurgery.ir import Blocks


def best_permutation(score: torch.Tensor, block: int | Blocks, order: torch.Tensor | None = None) -> torch.Tensor:
    """``perm`` maximising ``Σ_i score[i, perm[i]]`` with ``perm`` mapping block ``i`` onto block ``order[i]``
    (each onto itself without an order, or when blocks may not move)."""
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs 0.4 s to import: on first use

    d = score.shape[0]
    blocks = block if isinstance(block, Blocks) else Blocks(d // block, block)
    size = blocks.size
    s = score.detach().double().cpu().numpy()
    heads = order.tolist() if order is not None and blocks.moves else list(range(blocks.count))
    perm = np.empty(d, dtype=np.int64)
    np.negative(s, out=s)  # maximize=True would negate a copy (254 MB for a 5632-wide group): in place, and back
    try:
        for i, j in enumerate(heads):
            lo, at = i * size, j * size
            if blocks.inner:
                _, cols = linear_sum_assignment(s[lo:lo + size, at:at + size])
            else:
                cols = np.arange(size)
            perm[lo:lo + size] = at + cols
    finally:
        np.negative(s, out=s)  # the caller's score, exactly as it was
    return torch.from_numpy(perm)


def assignment_value(score: torch.Tensor, perm: torch.Tensor) -> float:
    return score[torch.arange(perm.numel()), perm].sum().item()
