"""The merged width of every group: ``width="max" | "min" | model index | {group: width}``."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import Capability, ModelGraph


class WidthRule(enum.Enum):
    """A group's merged width from the models' widths: the widest, the narrowest, or the anchor's."""

    MAX = "max"
    MIN = "min"
    ANCHOR = "anchor"


PICK: Mapping[WidthRule, Callable[[Sequence[int], int], int]] = MappingProxyType({
    WidthRule.MAX: lambda sizes, anchor: max(sizes),
    WidthRule.MIN: lambda sizes, anchor: min(sizes),
    WidthRule.ANCHOR: lambda sizes, anchor: sizes[anchor],
})

Width = str | WidthRule | int | Mapping[int, int] | None


def resolve_widths(graphs: Sequence[ModelGraph], width: Width, default: WidthRule, anchor: int) -> dict[int, int]:
    """Per permutable group, the width of the merged model.

    ``"max"`` / ``"min"``: the widest / narrowest model's width; an ``int``: that model's widths; a mapping:
    explicit widths for some groups (the others take ``default``, the method's ``WidthRule``).
    """
    choice: object = default if width is None else width
    explicit: Mapping[int, int] = {}
    if isinstance(choice, Mapping):
        explicit, choice = choice, default
    rule = _rule(choice)
    out = {}
    for grp in graphs[0].permutable():
        sizes = [g.group(grp.id).size for g in graphs]
        if grp.id in explicit:
            asked = explicit[grp.id]
            if not isinstance(asked, int) or isinstance(asked, bool):
                raise MergeInputError(f"group {grp.id} ({grp.label}): width takes a whole number of channels, not {asked!r}")
            out[grp.id] = asked
        elif rule is not None:
            out[grp.id] = PICK[rule](sizes, anchor)
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


def _rule(choice: object) -> WidthRule | None:
    """``choice`` as a rule (``"max"`` is ``WidthRule.MAX``), or ``None`` when it is not one."""
    if isinstance(choice, WidthRule):
        return choice
    values = {rule.value: rule for rule in WidthRule}
    return values.get(choice) if isinstance(choice, str) else None


def check_width_changes(graphs: Sequence[ModelGraph], targets: Mapping[int, int], method: str,
                        need: Capability, skip: Collection[int] = ()) -> None:
    """Every group whose width differs between models, or from its target, must admit ``need`` (zip or pad);
    ``skip``: groups checked otherwise (heads of different counts, ``merging.head_counts``)."""
    for grp in graphs[0].permutable():
        sizes = {g.group(grp.id).size for g in graphs}
        if sizes == {targets[grp.id]} or grp.id in skip:
            continue
        for g in graphs:
            why = g.group(grp.id).why_not(need)
            if why:
                raise MergeInputError(f"{g.name}: group {grp.id} ({grp.label}) has widths "
                                 f"{'/'.join(str(x.group(grp.id).size) for x in graphs)} -> {targets[grp.id]}, "
                                 f"but method {method!r} cannot change its width: {why}")
