"""Where new units go in a stage: the positions an inserting pass takes, the node a new unit reads, and the rule
that nothing goes in front of a fixed first unit. Shared by ``InsertIdentity`` and ``InsertZeroResidual``.

Position ``p`` of a stage of ``n`` units is the gap before unit ``p`` (``n``: after the last); a new unit at
``p > 0`` reads the exit of unit ``p - 1``, at ``0`` the stage's entry.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([8, 8]), torch.randn(2, 64))
>>> st = g.stage("stage0")
>>> counted_positions(g, st, (1, 2, 1)), insertion_point(g, st, 1)
([(2, 1), (1, 2)], 'layers_1')
"""

from __future__ import annotations

from collections import Counter

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, Stage, Unit


def insertion_point(g: ModelGraph, st: Stage, position: int) -> str:
    """The node whose output a unit inserted before position ``position`` of ``st`` would read."""
    units = [g.unit(k) for k in st.units]
    return units[position - 1].exit if position > 0 else units[0].entry


def refuse_before_fixed(where: str, units: list[Unit], p: int) -> None:
    """Nothing goes in front of a fixed first unit: it stays first and is aligned one to one."""
    if p == 0 and units[0].fixed is not None:
        raise PassError(f"{where}: the stage's first unit {units[0].key} is fixed ({units[0].fixed}); insert after it")


def counted_positions(g: ModelGraph, st: Stage, positions: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(position, how many units go there)``, the last position first (inserting there moves nothing before
    it); ``PassError`` for a position outside ``0 … len(st)``."""
    for p in positions:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= len(st):
            raise PassError(f"{g.name}: stage {st.key} has {len(st)} units; positions go from 0 to {len(st)}, not "
                            f"{p!r}")
    return sorted(Counter(positions).items(), reverse=True)
