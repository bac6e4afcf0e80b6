"""Groups at new widths: sizes change and every slot or site laid out after a resized one shifts.

A concat consumer holds groups side by side along one axis (``offset`` 0, 64, 96, …); when the group at
offset 0 grows from 64 to 80 channels, the others move to 80, 112, …. Shared by ``PadWidth``,
``ZipNeurons`` and the merge of models of different widths.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

from hetsurgery.errors import PassError
from hetsurgery.ir import ModelGraph, PermGroup


def resized_groups(g: ModelGraph, widths: Mapping[int, int]) -> tuple[PermGroup, ...]:
    """``g``'s groups with group ``gid`` at width ``widths[gid]`` (missing groups keep theirs)."""
    changed = {gid: w for gid, w in widths.items() if g.group(gid).size != w}
    if not changed:
        return g.groups
    for gid in changed:
        grp = g.group(gid)
        if grp.structure.count > 1:
            raise PassError(f"{g.name}: group {gid} ({grp.label}) comes in {grp.structure.count} blocks; "
                            "its width cannot change")
        if not all(s.packed for s in grp.slots) or not all(s.packed for s in grp.sites):
            raise PassError(f"{g.name}: group {gid} ({grp.label}) is interleaved with other channels (a channel "
                            "shuffle); its width cannot change")
    slot_shift = _shifts([(grp, s.param, s.dim, s.offset, s.inner) for grp in g.groups for s in grp.slots], changed)
    site_shift = _shifts([(grp, s.node, s.dim, s.offset, s.inner) for grp in g.groups for s in grp.sites], changed)
    out = []
    for grp in g.groups:
        slots = tuple(replace(s, offset=s.offset + slot_shift[(s.param, s.dim, s.offset)]) for s in grp.slots)
        sites = tuple(replace(s, offset=s.offset + site_shift[(s.node, s.dim, s.offset)]) for s in grp.sites)
        new = replace(grp, slots=slots, sites=sites)
        out.append(new.resized(changed[grp.id]) if grp.id in changed else new)
    return tuple(out)


def _shifts(items: list[tuple[PermGroup, str, int, int, int]], changed: Mapping[int, int]
            ) -> dict[tuple[str, int, int], int]:
    """For each (tensor, dim, offset): how far the layout before that offset grew."""
    growth: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for grp, name, dim, offset, inner in items:
        if grp.id in changed:
            growth[(name, dim)].append((offset, (changed[grp.id] - grp.size) * inner))
    shift = {}
    for _, name, dim, offset, _ in items:
        shift[(name, dim, offset)] = sum(d for at, d in growth.get((name, dim), ()) if at < offset)
    return shift
