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



# -- every entry point, with models in train mode ---------------------------------------------------------------
# A model the user trains is in train mode, often with some layers in eval mode (a frozen BatchNorm): no entry
# point may change a flag, a tensor or which tensors the model holds, and what it returns must own its tensors
# (training the result one step leaves the user's models as they were).

IMAGES = torch.randn(32, 1, 8, 8)
VECTORS = torch.randn(32, 64)
LABELLED = [(IMAGES, torch.randint(0, 10, (32,)))]
Entry = Callable[[list[nn.Module]], "nn.Module | None"]


def _train_mode(model: nn.Module) -> nn.Module:
    """``model`` in train mode, its first BatchNorm in eval mode (mixed flags: a blanket ``.train()`` shows)."""
    randomise(model, 3).train()
    next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)).eval()
    return model


def _resnet(*blocks: int) -> nn.Module:
    return _train_mode(hs.zoo.resnet(blocks, in_channels=1))


def _mlp(*hidden: int) -> nn.Module:
    return _train_mode(hs.zoo.mlp(hidden, batch_norm=True))


def _threshold(ms: list[nn.Module]) -> None:
    hs.find_lambda_threshold(ms[0], ms[1], LABELLED, layers="all", lambdas=(0.0, 0.5, 1.0), refine=1, verify=1)


def _accuracy(ms: list[nn.Module]) -> None:
    hs.evaluate.accuracy(ms[0], LABELLED)


ENTRY_POINTS: dict[str, tuple[Callable[[], list[nn.Module]], Entry]] = {
    "trace": (lambda: [_resnet(1, 1, 1)], lambda ms: hs.to_module(hs.trace(ms[0], IMAGES[:2]))),
    "merge": (lambda: [_resnet(1, 1, 1), _resnet(1, 1, 1)],
              lambda ms: hs.merge(ms, [IMAGES], method="zip", progress=False).model),
    "merge-depth": (lambda: [_resnet(2, 1, 1), _resnet(1, 1, 1)],
                    lambda ms: hs.merge(ms, [IMAGES], method="zip", depth="lma", progress=False).model),
    "merge-partial": (lambda: [_resnet(2, 1, 1), _resnet(1, 1, 1)],
                      lambda ms: hs.merge(ms, [IMAGES], method="zip", depth="lma", stop_at=3, progress=False).model),
    "merge-fused": (lambda: [_mlp(16, 16, 16), _mlp(16, 16)],
                    lambda ms: hs.merge(ms, [VECTORS], depth="cla", balance="merge", progress=False).model),
    "align": (lambda: [_resnet(1, 1, 1), _resnet(1, 1, 1)], lambda ms: hs.align(ms, [IMAGES], progress=False)[1]),
    "assemble": (lambda: [_resnet(1, 1, 1), _resnet(1, 1, 1)],
                 lambda ms: hs.assemble(ms[0], ms[1:], [IMAGES], lam=0.5, progress=False).model),
    "assemble-depth": (lambda: [_resnet(1, 1, 1), _resnet(2, 1, 1)],
                       lambda ms: hs.assemble(ms[0], ms[1:], [IMAGES], lam=0.5, depth="lma", progress=False).model),
    "find_lambda_threshold": (lambda: [_resnet(1, 1, 1), _resnet(1, 1, 1)], _threshold),
    "evaluate.accuracy": (lambda: [_resnet(1, 1, 1)], _accuracy),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_leaves_train_mode_models_untouched(entry: str) -> None:
    build, run = ENTRY_POINTS[entry]
    models = build()
    before = [_model_state(m) for m in models]
    result = run(models)
    for m, state in zip(models, before, strict=True):
        _same_model(m, state)
    if result is not None:  # the result owns its tensors: training it leaves the user's models alone
        opt = torch.optim.SGD(result.parameters(), lr=0.1)
        result.train()
        result(VECTORS[:8] if entry == "merge-fused" else IMAGES[:8]).square().mean().backward()
        opt.step()
        for m, state in zip(models, before, strict=True):
            _same_model(m, state)
