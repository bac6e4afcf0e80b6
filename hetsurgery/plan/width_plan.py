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

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from hetsurgery.ir.slot_maps import Map, Placement


class MatchKind(enum.StrEnum):
    """How a group was matched: ``GroupMatch.kind``, written to ``plan.json`` as its value."""

    IDENTITY = "identity"  # each model's channels in their own order (frozen groups, plain averaging)
    PERMUTATION = "permutation"  # one permutation per model (permute, weight matching)
    OT = "ot"  # optimal transport onto one model's neurons
    ZIP = "zip"  # zipped: each merged channel the mean of a cluster of features
    MAL = "mal"  # Model Assembly Learning: permutations in the zero-padded space
    ALONE = "alone"  # one model's channels, the others' left out (inside a unit depth balancing inserted in them)
    STREAM = "stream"  # a LayerNorm'd residual stream zipped onto the principal directions of all models' features
    ORTHOGONAL = "orthogonal"  # one orthogonal map per model (rotations inside heads), ``scales`` its weight


@dataclass(frozen=True)
class MalReport:
    """MAL's search in one group for one model against the anchor: the zero-padded width, whether it alternated
    LAPs over both sides of every layer (``mal``) or solved one LAP per layer (``mal-pad``), the objective
    ``Σ⟨W_anchor, W_model⟩`` after each iteration, and whether the alternation converged."""

    padded_width: int
    alternating: bool
    iterations: int
    objective: tuple[float, ...]
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"padded_width": self.padded_width, "alternating": self.alternating, "iterations": self.iterations,
                "objective": list(self.objective), "converged": self.converged}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> MalReport:
        return MalReport(int(raw["padded_width"]), bool(raw["alternating"]), int(raw["iterations"]),
                         tuple(float(x) for x in raw["objective"]), bool(raw["converged"]))


@dataclass(frozen=True)
class GroupMatch:
    """One group's alignment. Permutations are kept as index vectors (``perms``, ``scales``), MAL's zero-padded
    ones as one ``Placement`` per model (``placed``: ``M_k``; ``U_k`` is its transpose unscaled), anything else as
    dense ``merges`` / ``unmerges``; ``merge`` / ``unmerge`` give the dense matrices either way.
    ``kind`` says how it was matched (a ``MatchKind``; a kind written by another version stays its text; ``None``:
    as the plan's method),
    ``mal`` holds MAL's report per model other than the anchor, ``info`` method details for the record
    (zip's clusters, weight matching's sweeps, notes)."""

    group: int
    size: int
    merges: tuple[torch.Tensor, ...] | None
    unmerges: tuple[torch.Tensor, ...] | None
    info: Mapping[str, Any] = field(default_factory=dict)
    perms: tuple[torch.Tensor, ...] | None = None
    scales: tuple[float, ...] = ()
    kind: MatchKind | str | None = None  # None: matched as the plan's method says
    mal: tuple[MalReport, ...] = ()
    placed: tuple[Placement, ...] | None = None

    @staticmethod
    def identity(group: int, widths: Sequence[int], weights: Sequence[float]) -> GroupMatch:
        perms = [torch.arange(widths[0]) for _ in widths]
        return replace(GroupMatch.from_perms(group, perms, weights), kind=MatchKind.IDENTITY)

    @staticmethod
    def from_perms(group: int, perms: Sequence[torch.Tensor], weights: Sequence[float],
                   info: Mapping[str, Any] | None = None) -> GroupMatch:
        """Merged channel ``i`` is channel ``perms[k][i]`` of model ``k``, averaged with ``weights``."""
        return GroupMatch(group, perms[0].numel(), None, None, dict(info or {}),
                          tuple(torch.as_tensor(p, dtype=torch.long) for p in perms), tuple(float(w) for w in weights),
                          MatchKind.PERMUTATION)

    @property
    def merge(self) -> tuple[torch.Tensor, ...]:
        if self.merges is not None:
            return self.merges
        if self.placed is not None:
            return tuple(p.dense() for p in self.placed)
        assert self.perms is not None
        return tuple(s * _rows_of_identity(p) for s, p in zip(self.scales, self.perms, strict=True))

    @property
    def unmerge(self) -> tuple[torch.Tensor, ...]:
        if self.unmerges is not None:
            return self.unmerges
        if self.placed is not None:
            return tuple(replace(p, scale=1.0).dense().T.contiguous() for p in self.placed)
        assert self.perms is not None
        return tuple(_rows_of_identity(p).T.contiguous() for p in self.perms)

    def produce_map(self, k: int, normalised: bool = False) -> Map:
        """``M_k`` (or, ``normalised``, ``M_k`` with rows summing to 1: model k alone in merged space)."""
        if self.perms is not None:
            return self.perms[k], 1.0 if normalised else self.scales[k]
        if self.placed is not None:  # normalised: each row's one entry is 1 (none where the weight is 0)
            p = self.placed[k]
            return replace(p, scale=float(p.scale != 0)) if normalised else p
        m = self.merge[k]
        if not normalised:
            return m
        if self.kind is MatchKind.STREAM:
            return stream_alone(self.unmerge[k])
        if self.kind is MatchKind.ORTHOGONAL:
            return m / self.scales[k]
        sums = m.sum(1, keepdim=True)
        return torch.where(sums != 0, m / sums.where(sums != 0, torch.ones_like(sums)), m)

    def consume_map(self, k: int) -> Map:
        """``U_kᵀ``, the matrix applied along consumer-side axes."""
        if self.perms is not None:
            return self.perms[k], 1.0
        if self.placed is not None:
            return replace(self.placed[k], scale=1.0)
        return self.unmerge[k].T

    def assignment(self, k: int) -> list[list[int]]:
        """For each merged channel, the channels of model ``k`` that feed it (nonzero in ``M_k``)."""
        if self.perms is not None:
            return [[int(j)] for j in self.perms[k]]
        m = self.merge[k]
        return [torch.nonzero(m[i]).flatten().tolist() for i in range(m.shape[0])]


@dataclass(frozen=True)
class WidthPlan:
    """Per group id, its ``GroupMatch``; ``keys`` gives each group's stable key (``PermGroup.key``: the node
    that produces it), so that the plan can be applied to the same model lifted again after a structural
    edit, where group ids (positions) may differ: ``on(graph)``."""

    method: str
    weights: tuple[float, ...]
    anchor: int
    groups: Mapping[int, GroupMatch]
    keys: Mapping[int, str] = field(default_factory=dict)

    def widths(self) -> dict[int, int]:
        return {gid: m.size for gid, m in self.groups.items()}

    def on(self, groups: Sequence[Any]) -> WidthPlan:
        """The plan with its groups renumbered to the ids that ``groups`` (``PermGroup``s with ``key``s) give
        the same keys; ``KeyError`` names a key none of them has."""
        ids = {grp.key: grp.id for grp in groups}
        missing = [k for k in self.keys.values() if k not in ids]
        if missing or len(self.keys) != len(self.groups):
            raise KeyError(f"the plan's groups {missing or 'without keys'} are not in this graph")
        move = {gid: ids[self.keys[gid]] for gid in self.groups}
        return WidthPlan(self.method, self.weights, self.anchor,
                         {move[gid]: replace(m, group=move[gid]) for gid, m in self.groups.items()},
                         {move[gid]: key for gid, key in self.keys.items()})

    def to_json(self) -> str:
        return json.dumps({
            "method": self.method, "weights": list(self.weights), "anchor": self.anchor,
            "groups": [{**_group_json(m), **({"key": self.keys[gid]} if gid in self.keys else {})}
                       for gid, m in self.groups.items()],
        })

    @staticmethod
    def from_json(text: str) -> WidthPlan:
        raw = json.loads(text)
        groups = {}
        keys = {g["group"]: g["key"] for g in raw["groups"] if "key" in g}
        for g in raw["groups"]:
            kind, mal = _kind(g.get("kind", g["info"].get("kind"))), tuple(MalReport.from_dict(r) for r in g.get("mal", ()))
            info = {k: v for k, v in g["info"].items() if k != "kind"}  # plans before 0.2 kept the kind in info
            if "perms" in g:
                groups[g["group"]] = GroupMatch(g["group"], g["size"], None, None, info,
                                                tuple(torch.tensor(p) for p in g["perms"]), tuple(g["scales"]), kind,
                                                mal)
            else:
                groups[g["group"]] = GroupMatch(g["group"], g["size"], tuple(_dense(t) for t in g["merge"]),
                                                tuple(_dense(t) for t in g["unmerge"]), info, kind=kind, mal=mal)
        return WidthPlan(raw["method"], tuple(raw["weights"]), raw["anchor"], groups, keys)


def _group_json(m: GroupMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"group": m.group, "size": m.size, "info": _jsonable(m.info)}
    if m.kind is not None:
        out["kind"] = str(m.kind)
    if m.mal:
        out["mal"] = [r.to_dict() for r in m.mal]
    if m.perms is not None:
        out.update(perms=[p.tolist() for p in m.perms], scales=list(m.scales))
    else:
        out.update(merge=[_sparse(t) for t in m.merge], unmerge=[_sparse(t) for t in m.unmerge])
    return out


def stream_alone(unmerge: torch.Tensor) -> torch.Tensor:
    """Model ``k`` alone in a zipped stream's merged space (``MatchKind.STREAM``): the map ``A`` with ``U A = C`` (the
    centring) on what ``U`` reconstructs, ``pinv(U)``, plus the mean term that carries a folded norm's scale of
    ones to ones."""
    d, r = unmerge.shape
    return torch.linalg.pinv(unmerge.double()) + torch.full((r, d), 1.0 / d, dtype=torch.float64)


def _rows_of_identity(perm: torch.Tensor) -> torch.Tensor:
    return torch.eye(perm.numel(), dtype=torch.float64)[perm]


def _sparse(t: torch.Tensor) -> dict[str, Any]:
    idx = torch.nonzero(t)
    return {"shape": list(t.shape), "rows": idx[:, 0].tolist(), "cols": idx[:, 1].tolist(),
            "vals": t[idx[:, 0], idx[:, 1]].tolist()}


def _dense(d: Mapping[str, Any]) -> torch.Tensor:
    t = torch.zeros(d["shape"], dtype=torch.float64)
    t[d["rows"], d["cols"]] = torch.tensor(d["vals"], dtype=torch.float64)
    return t


def _kind(raw: object) -> MatchKind | str | None:
    """A kind read back: one this version knows becomes its ``MatchKind``, anything else stays as written."""
    kinds = {kind.value: kind for kind in MatchKind}
    return None if raw is None else kinds[raw] if isinstance(raw, str) and raw in kinds else str(raw)


def _jsonable(x: Any) -> Any:
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
