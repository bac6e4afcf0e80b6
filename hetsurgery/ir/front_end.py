"""``FrontEnd``: how a model became the fx graph a ``ModelGraph`` holds, and why that way.

``trace`` tries torch.fx's symbolic trace first; when it fails, ``torch.export`` (``strict=False``) runs and
its aten graph is normalised back into torch-level calls. A ``GraphModule`` made by another tracer is taken
as it is. The graph records which of these ran, the reason (the fx error, in one line, when export took
over) and what the front end decided on the user's behalf (``use_cache=False``, which dims stayed dynamic).

>>> fe = FrontEnd(FrontEndKind.EXPORT, "torch.fx failed: TypeError: 'Proxy' object does not support item assignment",
...               ("dynamic dims: input_ids 0, 1",))
>>> print(fe)
front end: torch.export (strict=False); torch.fx failed: TypeError: 'Proxy' object does not support item assignment; dynamic dims: input_ids 0, 1
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FrontEndKind(enum.Enum):
    """The front ends ``trace`` knows."""

    FX = "fx"  # torch.fx symbolic trace of a copy of the model's structure
    GRAPH = "graph"  # an fx GraphModule made by another tracer, lifted as it is
    EXPORT = "export"  # torch.export (strict=False), its aten graph normalised into torch-level calls

    @property
    def title(self) -> str:
        return {FrontEndKind.FX: "torch.fx", FrontEndKind.GRAPH: "a given fx GraphModule",
                FrontEndKind.EXPORT: "torch.export (strict=False)"}[self]


@dataclass(frozen=True)
class FrontEnd:
    """Which front end made the graph (``kind``), why that one (``reason``, "" when it was the default) and what
    it decided on the user's behalf (``notes``)."""

    kind: FrontEndKind = FrontEndKind.FX
    reason: str = ""
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "; ".join([f"front end: {self.kind.title}", *filter(None, [self.reason]), *self.notes])

    @property
    def plain(self) -> bool:
        """The default front end ran and decided nothing: there is nothing to say about it."""
        return self.kind is FrontEndKind.FX and not self.reason and not self.notes
