"""``WidthPlan``: for every group, how each model's channels map onto the merged channels.

For group ``g`` and model ``k``, ``merge[k]`` is ``M_k`` (``r x d_k``) and ``unmerge[k]`` is ``U_k``
(``d_k x r``); the merged parameter of a layer is ``Σ_k M_k^out W_k U_k^in``. The models' weights are
folded into ``M_k``: for plain averaging of two models ``M_k = I/2`` and ``U_k = I``.

>>> import torch
>>> p = WidthPlan("average", (0.5, 0.5), 0, {0: GroupMatch.identity(0, (3, 3), (0.5, 0.5))})
>>> WidthPlan.from_json(p.to_json()).groups[0].merge[1]
tensor([[0.5000, 0.0000, 0.0000],
        [0.0000, 0.5000, 0.0000],
        [0.0000, 0.0000, 0.5000]], dtype=torch.float64)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class GroupMatch:
    group: int
    size: int
    merge: tuple[torch.Tensor, ...]
    unmerge: tuple[torch.Tensor, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def identity(group: int, widths: Sequence[int], weights: Sequence[float]) -> GroupMatch:
        d = widths[0]
        eye = torch.eye(d, dtype=torch.float64)
        return GroupMatch(group, d, tuple(w * eye for w in weights), tuple(eye for _ in widths),
                          {"kind": "identity"})

    @staticmethod
    def from_perms(group: int, perms: Sequence[torch.Tensor], weights: Sequence[float],
                   info: Mapping[str, Any] | None = None) -> GroupMatch:
        """Merged channel ``i`` is channel ``perms[k][i]`` of model ``k``, averaged with ``weights``."""
        mats = [torch.eye(p.numel(), dtype=torch.float64)[p] for p in perms]
        return GroupMatch(group, perms[0].numel(), tuple(w * m for w, m in zip(weights, mats, strict=True)),
                          tuple(m.T.contiguous() for m in mats), {"kind": "permutation", **(info or {})})

    def assignment(self, k: int) -> list[list[int]]:
        """For each merged channel, the channels of model ``k`` that feed it (nonzero in ``M_k``)."""
        m = self.merge[k]
        return [torch.nonzero(m[i]).flatten().tolist() for i in range(m.shape[0])]


@dataclass(frozen=True)
class WidthPlan:
    method: str
    weights: tuple[float, ...]
    anchor: int
    groups: Mapping[int, GroupMatch]

    def widths(self) -> dict[int, int]:
        return {gid: m.size for gid, m in self.groups.items()}

    def to_json(self) -> str:
        return json.dumps({
            "method": self.method, "weights": list(self.weights), "anchor": self.anchor,
            "groups": [{"group": m.group, "size": m.size, "merge": [_sparse(t) for t in m.merge],
                        "unmerge": [_sparse(t) for t in m.unmerge], "info": _jsonable(m.info)}
                       for m in self.groups.values()],
        })

    @staticmethod
    def from_json(text: str) -> WidthPlan:
        raw = json.loads(text)
        groups = {g["group"]: GroupMatch(g["group"], g["size"], tuple(_dense(t) for t in g["merge"]),
                                         tuple(_dense(t) for t in g["unmerge"]), g["info"])
                  for g in raw["groups"]}
        return WidthPlan(raw["method"], tuple(raw["weights"]), raw["anchor"], groups)


def _sparse(t: torch.Tensor) -> dict[str, Any]:
    idx = torch.nonzero(t)
    return {"shape": list(t.shape), "rows": idx[:, 0].tolist(), "cols": idx[:, 1].tolist(),
            "vals": t[idx[:, 0], idx[:, 1]].tolist()}


def _dense(d: Mapping[str, Any]) -> torch.Tensor:
    t = torch.zeros(d["shape"], dtype=torch.float64)
    t[d["rows"], d["cols"]] = torch.tensor(d["vals"], dtype=torch.float64)
    return t


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
