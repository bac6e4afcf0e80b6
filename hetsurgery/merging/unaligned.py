"""Groups a merge leaves unaligned because they are frozen, said out loud (``hs.UnalignedGroupWarning`` and a
line of the report) with the reason and what to do."""

from __future__ import annotations

from hetsurgery.ir import ModelGraph, Role


def unaligned_groups(g: ModelGraph, method: str) -> tuple[str, ...]:
    """Why each frozen group of hidden channels (channels a layer writes: frozen by an op the rules cannot follow,
    or by design while layers also read them, as features the model returns beside its logits) stays unaligned,
    and what to do; none for ``average`` (it aligns nothing) or for the model's input and its final outputs
    (their order is the data's and the labels', fixed by design).

    >>> import torch, hetsurgery as hs
    >>> class Both(torch.nn.Module):  # returns its hidden features beside the logits
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         h = torch.relu(self.a(x))
    ...         return self.b(h), h
    >>> print(unaligned_groups(hs.trace(Both(), torch.randn(2, 4)), "zip")[0])  # doctest: +ELLIPSIS
    zip leaves group 0 (a, 8 channels) unaligned: it is frozen (model output), so every method averages ...
    """
    if method == "average":
        return ()
    out = []
    for grp in g.groups:
        read = bool(grp.slots_with(Role.CONSUME))
        if grp.perm_ok or not grp.slots_with(Role.PRODUCE) or (grp.by_design and not read):
            continue
        advice = _OUTPUT_ADVICE if grp.by_design else _FROZEN_ADVICE
        out.append(f"{method} leaves group {grp.id} ({grp.label}, {grp.size} channels) unaligned: it is frozen "
                   f"({grp.frozen}), so every method averages its channels position by position, as plain averaging "
                   f"does. {advice}")
    return tuple(out)


_OUTPUT_ADVICE = ("The models return these hidden features, and an output keeps its order: to align them, merge "
                  "models whose forward returns only the outputs that must stay in place (a wrapper that drops the "
                  "features, or a flag of your model); the merged weights keep your model's state_dict keys and "
                  "load back into it.")
_FROZEN_ADVICE = ("The channel rules cannot follow these channels through the op named there: write it with ops "
                  "the rules know (the README lists them), so that the channels may move.")
