"""What an assembly did, unit by unit and donor by donor: the record ``plan.json`` keeps under ``"assembly"``.

>>> r = UnitRecord(donor=0, unit="layers_0", lam=0.3, counterpart=("layers_0",), how="same position",
...                widths=((16, 16), (24, 16)), objective_before=1.5, objective_after=4.0, converged=True)
>>> r.size_compatible, r.blended
(False, True)
>>> UnitRecord.from_dict(r.to_dict()) == r
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hetsurgery.plan.depth import DepthPlan

RECORD_FORMAT = "hetsurgery-assembly/1"


@dataclass(frozen=True)
class UnitRecord:
    """One selected unit of the base and one donor: the donor's counterpart (its original unit keys: several
    when fused, none when the depth plan inserted a unit there), ``λ``, the widths of the unit's groups
    (``(base, donor)`` per permutable group), MAL's objective ``Σ⟨W_base, W_donor⟩`` over the unit's learned
    tensors before alignment (channel ``i`` on channel ``i``) and after, and whether the alternating search
    converged on every group of the unit (``None``: the method does not alternate). ``note`` says why a unit
    was not blended."""

    donor: int
    unit: str
    lam: float
    counterpart: tuple[str, ...]
    how: str
    widths: tuple[tuple[int, int], ...]
    objective_before: float | None = None
    objective_after: float | None = None
    converged: bool | None = None
    note: str = ""

    @property
    def blended(self) -> bool:
        return not self.note and self.lam > 0

    @property
    def size_compatible(self) -> bool:
        """Every group of the unit has the base's width in the donor (a LAP aligns it, no padding)."""
        return all(b == d for b, d in self.widths)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counterpart"] = list(self.counterpart)
        out["widths"] = [list(w) for w in self.widths]
        return {**out, "blended": self.blended, "size_compatible": self.size_compatible}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> UnitRecord:
        return UnitRecord(int(raw["donor"]), str(raw["unit"]), float(raw["lam"]), tuple(raw["counterpart"]),
                          str(raw["how"]), tuple((int(b), int(d)) for b, d in raw["widths"]),
                          raw.get("objective_before"), raw.get("objective_after"), raw.get("converged"),
                          str(raw.get("note", "")))


@dataclass(frozen=True)
class DonorRecord:
    """One donor: its name, the alignment method and options, the depth plan that balanced it (``None`` when
    its depth matched), the structural passes that balanced it (specs), and seconds per stage."""

    index: int
    name: str
    align: str
    options: Mapping[str, Any]
    depth: DepthPlan | None
    passes: tuple[Mapping[str, Any], ...]
    seconds: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "align": self.align, "options": dict(self.options),
                "depth": None if self.depth is None else self.depth.to_dict(),
                "passes": [dict(p) for p in self.passes], "seconds": dict(self.seconds)}


def record_dict(units: Sequence[UnitRecord], donors: Sequence[DonorRecord], seconds: Mapping[str, float],
                bn: str) -> dict[str, Any]:
    """The ``"assembly"`` value of ``plan.json``: JSON-able; readers ignore keys they do not know."""
    return {"format": RECORD_FORMAT, "donors": [d.to_dict() for d in donors], "units": [u.to_dict() for u in units],
            "batchnorm": bn, "seconds": dict(seconds)}


def units_table(units: Sequence[UnitRecord], names: Sequence[str]) -> str:
    """A text table of the unit records (one row per donor and unit)."""
    head = f"{'donor':<12} {'unit':<18} {'λ':>5}  {'counterpart':<22} {'widths':<14} {'J before':>10} " \
           f"{'J after':>10}  conv  note"
    lines = [head]
    for r in units:
        widths = ",".join(f"{b}/{d}" for b, d in r.widths)
        before = "" if r.objective_before is None else f"{r.objective_before:10.3g}"
        after = "" if r.objective_after is None else f"{r.objective_after:10.3g}"
        conv = {None: "-", True: "yes", False: "no"}[r.converged]
        theirs = "+".join(r.counterpart) or "(inserted)"
        lines.append(f"{names[r.donor]:<12.12} {r.unit:<18.18} {r.lam:5.2f}  {theirs:<22.22} {widths:<14.14} "
                     f"{before:>10} {after:>10}  {conv:<4}  {r.note or r.how}")
    return "\n".join(lines)
