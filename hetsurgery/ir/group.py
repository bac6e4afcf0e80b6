"""``PermGroup``: a set of coupled channels that must be permuted, padded or zipped together."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hetsurgery.ir.slots import Blocks, Role, Site, Slot


@dataclass(frozen=True)
class PermGroup:
    """One permutation group.

    ``frozen`` is a reason (``"model output"``, ``"touched by unknown op torch.fft.fft2 at node fft2"``)
    or ``None``. ``by_design`` marks reasons that are not a failure of the tool (model input and
    output). ``pad_blockers`` / ``zip_blockers`` say why the width may not change.

    >>> g = PermGroup(0, 4, (Slot("fc.weight", 0),), Blocks(1, 4))
    >>> g.perm_ok, g.pad_ok, g.zip_ok
    (True, True, True)
    """

    id: int
    size: int
    slots: tuple[Slot, ...]
    structure: Blocks
    frozen: str | None = None
    by_design: bool = False
    pad_blockers: tuple[str, ...] = ()
    zip_blockers: tuple[str, ...] = ()
    sites: tuple[Site, ...] = ()
    label: str = ""
    producers: tuple[str, ...] = field(default=())  # fx nodes that create the group's features
    key: str = ""  # stable under structural edits (ids are positions): the first producer, "#i" for its i-th group

    @property
    def perm_ok(self) -> bool:
        return self.frozen is None

    @property
    def pad_ok(self) -> bool:
        return self.perm_ok and self.structure.count == 1 and not self.pad_blockers

    @property
    def zip_ok(self) -> bool:
        return self.perm_ok and self.structure.count == 1 and not self.zip_blockers

    def why_not(self, what: str) -> str:
        """A one-line reason why ``what`` ("perm", "pad" or "zip") is not allowed, or "" when it is."""
        if self.frozen is not None:
            return f"frozen: {self.frozen}"
        if what == "perm":
            return ""
        if self.structure.count > 1:
            return f"channels come in {self.structure.count} blocks of {self.structure.size}"
        blockers = self.pad_blockers if what == "pad" else self.zip_blockers
        return blockers[0] if blockers else ""

    def slots_with(self, role: Role) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.role is role)

    def resized(self, size: int) -> PermGroup:
        """The same group at a new width (a free group stays free)."""
        return replace(self, size=size, structure=Blocks(1, size))
