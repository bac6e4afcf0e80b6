"""The merged width of every group: ``width="max" | "min" | model index | {group: width}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph

Width = str | int | Mapping[int, int] | None


def resolve_widths(graphs: Sequence[ModelGraph], width: Width, default: str, anchor: int) -> dict[int, int]:
    """Per permutable group, the width of the merged model.

    ``"max"`` / ``"min"``: the widest / narrowest model's width; an ``int``: that model's widths; a mapping:
    explicit widths for some groups (the others take ``default``, itself ``"max"`` or ``"anchor"``).
    """
    choice: object = default if width is None else width
    explicit: Mapping[int, int] = {}
    if isinstance(choice, Mapping):
        explicit, choice = choice, default
    out = {}
    for grp in graphs[0].permutable():
        sizes = [g.group(grp.id).size for g in graphs]
        if grp.id in explicit:
            asked = explicit[grp.id]
            if not isinstance(asked, int) or isinstance(asked, bool):
                raise MergeInputError(f"group {grp.id} ({grp.label}): width takes a whole number of channels, not {asked!r}")
            out[grp.id] = asked
        elif choice == "max":
            out[grp.id] = max(sizes)
        elif choice == "min":
            out[grp.id] = min(sizes)
        elif choice == "anchor":
            out[grp.id] = sizes[anchor]
        elif isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(graphs):
            out[grp.id] = sizes[choice]
        else:
            raise MergeInputError(f"width must be 'max', 'min', a model index below {len(graphs)} or a mapping "
                             f"group -> width, not {width!r}")
        if not 1 <= out[grp.id] <= sum(sizes):
            raise MergeInputError(f"group {grp.id} ({grp.label}): width {out[grp.id]} is outside 1..{sum(sizes)} "
                             f"(the models have {'/'.join(map(str, sizes))} channels together)")
    unknown = set(explicit) - set(out)
    if unknown:
        raise MergeInputError(f"width names groups {sorted(unknown)}, which are frozen or do not exist")
    return out


def check_width_changes(graphs: Sequence[ModelGraph], targets: Mapping[int, int], method: str, need: str) -> None:
    """Every group whose width differs between models, or from its target, must admit ``need`` ("zip"/"pad")."""
    for grp in graphs[0].permutable():
        sizes = {g.group(grp.id).size for g in graphs}
        if sizes == {targets[grp.id]}:
            continue
        for g in graphs:
            why = g.group(grp.id).why_not(need)
            if why:
                raise MergeInputError(f"{g.name}: group {grp.id} ({grp.label}) has widths "
                                 f"{'/'.join(str(x.group(grp.id).size) for x in graphs)} -> {targets[grp.id]}, "
                                 f"but method {method!r} cannot change its width: {why}")
