"""``PermGroup``: a set of coupled channels that must be permuted, padded or zipped together."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from hetsurgery.ir.slots import Blocks, Role, Site, Slot


class Capability(enum.Enum):
    """What may be done to a group's channels: reorder them, zero-pad them to a larger width, or zip them
    (any merge matrix, any width)."""

    PERMUTE = "permute"
    PAD = "pad"
    ZIP = "zip"


MODEL_OUTPUT = "model output"  # the reason a group the model returns is frozen


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
    heads_with: tuple[int, ...] = ()  # with ``structure.moves``: the groups whose heads move with this one's

    @property
    def perm_ok(self) -> bool:
        return not self.why_not(Capability.PERMUTE)

    @property
    def pad_ok(self) -> bool:
        return not self.why_not(Capability.PAD)

    @property
    def zip_ok(self) -> bool:
        return not self.why_not(Capability.ZIP)

    def why_not(self, what: Capability) -> str:
        """A one-line reason why ``what`` is not allowed, or "" when it is.

        >>> PermGroup(0, 4, (), Blocks(2, 2)).why_not(Capability.PAD)
        'channels come in 2 blocks of 2'
        """
        reasons = REASONS[what](self)
        return reasons[0] if reasons else ""

    def slots_with(self, role: Role) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.role is role)

    def resized(self, size: int) -> PermGroup:
        """The same group at a new width (a free group stays free)."""
        return replace(self, size=size, structure=Blocks(1, size), heads_with=())


def _frozen(g: PermGroup) -> tuple[str, ...]:
    return () if g.frozen is None else (f"frozen: {g.frozen}",)


def _blocks(g: PermGroup) -> tuple[str, ...]:
    """A width change would cut through blocks (heads, conv groups), which must keep their sizes."""
    b = g.structure
    return () if b.count == 1 else (f"channels come in {b.count} blocks of {b.size}",)


# Per capability, everything that forbids it, the most basic reason first.
REASONS: Mapping[Capability, Callable[[PermGroup], tuple[str, ...]]] = MappingProxyType({
    Capability.PERMUTE: _frozen,
    Capability.PAD: lambda g: (*_frozen(g), *_blocks(g), *g.pad_blockers),
    Capability.ZIP: lambda g: (*_frozen(g), *_blocks(g), *g.zip_blockers),
})
