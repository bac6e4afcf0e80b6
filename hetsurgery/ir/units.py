"""Units and stages: what the depth-alignment papers call layers, and the runs of them that may be aligned.

A *layer unit* is a Linear or Conv node with the single-consumer channel-wise ops after it (BatchNorm,
activation, dropout): ``Conv-BN-ReLU``. A *block unit* is a residual block: the region from the node a
residual stream forks at to the add that joins it again (a transformer block's attention and MLP halves
together). A *stage* is a maximal run of units that may be aligned with each other: the hidden layers of
an MLP, the convs between two poolings, the blocks on one residual stream. Units found from the graph
(``hetsurgery.tracing.units``), never from module names.

>>> u = Unit("layers_0", UnitKind.LAYER, ("layers_0", "layers_1"), entry="flatten", exit="layers_1",
...          pre="layers_0")
>>> u.fixed is None, u.exit
(True, 'layers_1')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UnitKind(enum.Enum):
    LAYER = "layer"  # Linear/Conv + its BatchNorm, activation, dropout
    BLOCK = "block"  # a residual block: fork ... add (+ the channel-wise ops after the add)


@dataclass(frozen=True)
class Unit:
    """One unit: its fx nodes (in graph order), the node it reads (``entry``), the node that is its output
    (``exit``) and its pre-activation (``pre``: the last node before the unit's final activation).

    ``key`` is stable under structural edits (the name of the unit's first parametric node, or of its
    first add): plans address units by it. ``fixed`` says why the unit must stay where it is and be
    aligned one to one (it reads the model input, changes the shape, has a projection shortcut), or is
    ``None``. ``origin`` names the pass that created the unit (``""`` for the traced model's own).
    """

    key: str
    kind: UnitKind
    nodes: tuple[str, ...]
    entry: str
    exit: str
    pre: str
    fixed: str | None = None
    origin: str = ""


@dataclass(frozen=True)
class Stage:
    """A run of units that may be aligned with each other, in order.

    ``key`` is ``stage<i>``, the stage's place among the model's stages: structural passes add units to a
    stage or fuse some of its units, but never add or remove stages, so keys survive edits. ``entry`` is the
    node the stage's first unit reads.
    """

    key: str
    kind: UnitKind
    units: tuple[str, ...]
    entry: str = ""

    def __len__(self) -> int:
        return len(self.units)
