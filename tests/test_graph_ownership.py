"""Graphs own their structure: tracing, merging and every pass leave the user's model and the input graph
bit-identical, and lifting a graph's own module again gives the same groups (every zoo model)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from helpers import randomise
from torch import nn

import hetsurgery as hs
from hetsurgery.ir import UnitKind
from hetsurgery.passes import (
    ApplyPermutation,
    InsertIdentity,
    InsertZeroResidual,
    PadWidth,
    ResetBatchNorm,
    random_permutations,
)
from hetsurgery.tracing import lift_graph
from hetsurgery.zoo import ZOO

X = torch.randn(4, 1, 8, 8)
ZOO_MODELS = sorted(k for k in ZOO if k not in ("resnet50",))  # resnet50 adds nothing resnet32 does not


def _input(name: str) -> torch.Tensor:
    return torch.randn(4, 64) if name == "mlp" else X


def _model_state(model: nn.Module) -> tuple[str, dict[str, torch.Tensor], dict[str, int], list[bool]]:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return (repr(model), {k: v.detach().clone() for k, v in tensors.items()},
            {k: v.data_ptr() for k, v in tensors.items()}, [m.training for m in model.modules()])


def _same_model(model: nn.Module, before: tuple[str, dict[str, torch.Tensor], dict[str, int], list[bool]]) -> None:
    text, values, pointers, flags = before
    now = _model_state(model)
    assert now[0] == text and now[3] == flags
    assert now[2] == pointers  # the very same tensors, none replaced
    assert set(now[1]) == set(values) and all(torch.equal(now[1][k], values[k]) for k in values)


def _graph_state(g: hs.ModelGraph) -> tuple[str, str, dict[str, torch.Tensor], str]:
    return (g.dump(), g.module.code, {k: v.clone() for k, v in g.params.items()}, repr(g.module))


def _same_graph(g: hs.ModelGraph, before: tuple[str, str, dict[str, torch.Tensor], str]) -> None:
    dump, code, params, text = before
    assert g.dump() == dump and g.module.code == code and repr(g.module) == text
    assert all(torch.equal(g.params[k], v) for k, v in params.items())
    held = {**dict(g.module.named_parameters()), **dict(g.module.named_buffers())}
    assert all(torch.equal(held[k], v) for k, v in params.items())


def _passes(g: hs.ModelGraph) -> list[Callable[[hs.ModelGraph], hs.ModelGraph]]:
    out: list[Callable[[hs.ModelGraph], hs.ModelGraph]] = [ApplyPermutation(random_permutations(g, 0)),
                                                           ResetBatchNorm([X if g.name != "mlp" else _input("mlp")])]
    pad = next((grp for grp in g.groups if grp.pad_ok), None)
    if pad is not None:
        out.append(PadWidth(pad.id, pad.size + 2))
    for st in g.stages:
        last = len(st)
        out.append(InsertIdentity(st.key, (last,)) if st.kind is UnitKind.LAYER else InsertZeroResidual(st.key, (last,)))
    return out


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_tracing_and_every_pass_leave_the_model_and_the_input_graph_untouched(name: str) -> None:
    model = randomise(ZOO[name](), 1)
    x = _input(name)
    model_before = _model_state(model)
    g = hs.trace(model, x, name=name)
    _same_model(model, model_before)
    graph_before = _graph_state(g)
    for p in _passes(g):
        with contextlib.suppress(hs.PassError):  # a position some model refuses: nothing may change either way
            p(g)
        _same_graph(g, graph_before)
    _same_model(model, model_before)


@pytest.mark.parametrize("name", ["mlp", "resnet20", "transformer"])
def test_merging_leaves_every_model_untouched(name: str) -> None:
    a, b = randomise(ZOO[name](), 1), randomise(ZOO[name](), 2)
    before = [_model_state(m) for m in (a, b)]
    data = [_input(name)]
    for method in ("zip", "permute", "weight"):
        hs.merge([a, b], data, method=method, progress=False)
    for m, state in zip((a, b), before, strict=True):
        _same_model(m, state)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_lifting_a_graphs_own_module_again_gives_the_same_graph(name: str) -> None:
    g = hs.trace(ZOO[name](), _input(name), name=name)
    again = lift_graph(hs.to_module(g), g.example_inputs, g.name)
    assert again.dump() == g.dump()
    assert [u.key for u in again.units] == [u.key for u in g.units] and again.stages == g.stages


def test_verify_compares_params_with_the_module() -> None:
    from dataclasses import replace

    g = hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))
    bad = replace(g, params={**g.params, "layers.0.weight": torch.zeros(3, 3)})
    with pytest.raises(hs.IRError, match=r"layers.0.weight has shape \(3, 3\) in params but \(8, 64\) in the module"):
        bad.verify()
    missing = replace(g, params={k: v for k, v in g.params.items() if k != "layers.2.bias"})
    with pytest.raises(hs.IRError, match=r"the module holds layers\.2\.bias, which params lacks"):
        missing.verify()
