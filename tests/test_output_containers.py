"""Whatever a model returns is frozen, however it is packed: dicts, lists, tuples, namedtuples, dataclasses,
nested (a Hugging Face ``ModelOutput`` is a dataclass; detection models return lists of dicts)."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations

Pair = namedtuple("Pair", ["first", "second"])


@dataclasses.dataclass
class Output:
    first: Any
    second: Any = None


LEAVES = ("logits", "hidden", "total")
leaf = st.sampled_from(LEAVES)
spec = st.recursive(leaf, lambda inner: st.tuples(st.sampled_from(("dict", "list", "tuple", "pair", "output")),
                                                  st.lists(inner, min_size=1, max_size=2)), max_leaves=5)


class Packer(nn.Module):
    """Two Linear layers; returns the logits, the hidden features or a sum, packed as ``layout`` says."""

    def __init__(self, layout: object) -> None:
        super().__init__()
        self.fc1, self.fc2, self.layout = nn.Linear(4, 8), nn.Linear(8, 6), layout

    def forward(self, x: torch.Tensor) -> object:
        hidden = torch.relu(self.fc1(x))
        values = {"logits": self.fc2(hidden), "hidden": hidden, "total": x.sum()}
        return _pack(self.layout, values)


def _pack(layout: object, values: dict[str, torch.Tensor]) -> object:
    if isinstance(layout, str):
        return values[layout]
    kind, children = layout  # type: ignore[misc]
    items = [_pack(c, values) for c in children]
    if kind == "dict":
        return {f"k{i}": v for i, v in enumerate(items)}
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "pair":
        return Pair(items[0], items[-1])
    return Output(*items[:2])


def _flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in _flat(getattr(out, f.name))]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def _leaves(layout: object) -> set[str]:
    return {layout} if isinstance(layout, str) else {x for c in layout[1] for x in _leaves(c)}  # type: ignore[index]


@settings(max_examples=40, deadline=None)
@given(layout=spec, seed=st.integers(0, 1000))
def test_every_returned_tensor_is_frozen_and_permutation_keeps_the_outputs(layout: object, seed: int) -> None:
    torch.manual_seed(seed)
    model = Packer(layout).eval()
    x = torch.randn(3, 4)
    g = hs.trace(model, x)
    returned = _leaves(layout)
    hidden, logits = (next(grp for grp in g.groups if grp.size == n) for n in (8, 6))
    assert not logits.perm_ok or "logits" not in returned
    assert not hidden.perm_ok or "hidden" not in returned
    assert all(grp.by_design for grp in g.groups if grp.frozen)  # frozen as outputs, not as unknown ops
    moved = hs.to_module(ApplyPermutation(random_permutations(g, seed))(g))
    with torch.no_grad():
        want, got = _flat(model(x)), _flat(moved(x))
    assert len(want) == len(got) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(want, got, strict=True))


def test_a_dict_output_is_frozen_in_merges_too() -> None:
    """The reported case: ``{"out": y}`` used to lift with its output group permutable."""
    torch.manual_seed(0)
    a, b = Packer(("dict", ["logits"])).eval(), Packer(("dict", ["logits"])).eval()
    data = [torch.randn(64, 4)]
    merged = hs.merge([a, b], data, method="permute", weights=[0, 1], progress=False).model
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(merged(x)["k0"], b(x)["k0"], rtol=1e-5, atol=1e-6)
