"""Model Assembly Learning's generalised permutation (Zhang et al. 2025) for groups of different widths.

Size-compatible groups are aligned by a LAP; for size-incompatible ones the narrower model is
zero-padded to the wider width first (``PadWidth``: new rows, columns, biases and BatchNorm scales are
zero), then the permutations maximise ``Σ ⟨W_base, P_out W_target P_inᵀ⟩`` over the learned parameters
(not BatchNorm running statistics) in the padded space. Every layer couples the permutation of its
output side with that of its input side, so one LAP per group is not the optimum: "mal" alternates,
re-solving each group's LAP with the others fixed (``weight_matching``) and keeping a new permutation
only when it raises the objective, until a full round changes nothing, starting from mal-pad's alignment
(so it never ends below it); "mal-pad" is the simpler
baseline, one LAP per group, layer by layer, each on the weights whose other axes are already aligned (a
layer's outputs on its incoming weights: the one-pass alignment of the layer-wise literature, exact on a
permuted copy, blind to the outgoing weights the alternation also uses). Both report the objective per group.

Our reading of the paper's "bidirectional alignment" and "alternating optimisation": only the MAL
abstract and summaries were at hand when this was written. In the padded (square) space the two
directions base→target and target→base are the same LAP transposed (``⟨A, P B⟩ = ⟨Pᵀ A, B⟩``), so the
alternation that changes anything is between the two sides of each layer, which is what runs here.

A model of width ``d_k`` sits in the padded space through ``Q_k`` (``W x d_k``): ``Q_k[i, j] = 1`` when its
channel ``j`` lands on padded channel ``i``. The merged group keeps all ``W`` channels (``M_k = α_k Q_k``,
``U_k = Q_kᵀ``; a model contributes zeros where it has no channel, as in MAL), or only the channels one
model really has (its width).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hetsurgery.ir.slot_maps import Placement
from hetsurgery.plan.width_plan import GroupMatch, MalReport, MatchKind


def placement(perm: torch.Tensor, width: int) -> torch.Tensor:
    """``Q``'s rows as indices: padded channel ``i`` holds the model's channel ``perm[i]`` when ``perm[i] < d``, none
    (-1) otherwise.

    >>> placement(torch.tensor([2, 0, 1]), 2).tolist()
    [-1, 0, 1]
    """
    return torch.where(perm < width, perm, -1)


def mal_match(gid: int, perms: Sequence[torch.Tensor], widths: Sequence[int], weights: Sequence[float], *,
              keep: int | None, reports: Sequence[MalReport] = ()) -> GroupMatch:
    """The group's merge from padded-space permutations (one per model, the anchor's the identity), each model's
    ``M_k = w_k Q_k`` and ``U_k = Q_kᵀ`` kept as a ``Placement`` (indices, not ``W x d_k`` matrices).

    ``keep`` is ``None`` to keep every padded channel, or the index of the model whose real channels
    the merged group keeps.
    """
    index = [placement(p, d) for p, d in zip(perms, widths, strict=True)]
    if keep is not None:
        rows = torch.nonzero(index[keep] >= 0).flatten()
        index = [i[rows] for i in index]
    placed = tuple(Placement(i, float(w), d) for i, w, d in zip(index, weights, widths, strict=True))
    return GroupMatch(gid, index[0].numel(), None, None, kind=MatchKind.MAL, mal=tuple(reports), placed=placed)
