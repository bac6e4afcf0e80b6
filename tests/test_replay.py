"""Replay covers every structural pass: its table is built from the pass classes, and every pass a graph went
through (InsertIdentity, InsertZeroResidual, FuseReluSegment, RemoveBlock) replays from its spec, through JSON
and through a saved package, on the model traced again, to the same structure and the same tensors."""

from __future__ import annotations

import inspect
import json
import pathlib
from collections.abc import Callable

import pytest
import torch
from decoder_models import PostNormEncoder
from helpers import randomise

import hetsurgery as hs
import hetsurgery.passes as passes_package
from hetsurgery.export import read_package
from hetsurgery.passes import (
    FuseReluSegment,
    InsertIdentity,
    InsertPostNormBlock,
    InsertZeroResidual,
    RemoveBlock,
    replay,
    specs,
)
from hetsurgery.passes.replay import STRUCTURAL

IMAGES, VECTORS = torch.randn(2, 1, 8, 8), torch.randn(2, 64)
TOKENS = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))


def _pass_classes() -> list[type]:
    """Every pass class the passes package defines: a class with a ``name`` of its own and a ``__call__`` (or
    ``rewrite``, perhaps inherited: ``InsertPostNormBlock`` is an ``InsertZeroResidual``), module by module."""
    found = {}
    for module_name in passes_package.__all__:
        obj = getattr(passes_package, module_name)
        module = inspect.getmodule(obj)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith("hetsurgery.passes.") and isinstance(vars(cls).get("name"), str) \
                    and any(callable(getattr(cls, m, None)) for m in ("__call__", "rewrite")):
                found[cls.__qualname__] = cls
    return list(found.values())


def test_replays_table_is_the_pass_classes_that_write_specs() -> None:
    classes = _pass_classes()
    assert {"ApplyPermutation", "PadWidth", "ZipNeurons", "ResetBatchNorm", "RemoveBlock"} <= \
        {c.__name__ for c in classes}  # the discovery sees the whole package
    table = {cls.name: cls for cls in classes if callable(getattr(cls, "spec", None))}
    assert dict(STRUCTURAL) == table
    assert all(callable(getattr(cls, "from_spec", None)) for cls in table.values())


def _signs(g: hs.ModelGraph, unit: str) -> tuple[torch.Tensor, ...]:
    f = g.facts[g.unit(unit).exit]
    assert f.shape is not None
    return (torch.randint(0, 2, (f.shape[-1],)).double(),)


EXAMPLES: dict[type, tuple[Callable[[], torch.nn.Module], torch.Tensor, Callable[[hs.ModelGraph], object]]] = {
    InsertIdentity: (lambda: randomise(hs.zoo.mlp([8, 8]), 1), VECTORS, lambda g: InsertIdentity("stage0", (1, 2, 2))),
    InsertZeroResidual: (lambda: randomise(hs.zoo.resnet((1, 2, 1)), 2), IMAGES,
                         lambda g: InsertZeroResidual("stage1", (1, 2))),
    FuseReluSegment: (lambda: randomise(hs.zoo.mlp([8, 8, 8]), 3), VECTORS,
                      lambda g: FuseReluSegment(("layers_0", "layers_2"), _signs(g, "layers_0"))),
    RemoveBlock: (lambda: randomise(hs.zoo.resnet((3, 1, 1)), 4), IMAGES, lambda g: RemoveBlock(("layer1_1_conv1",))),
    InsertPostNormBlock: (lambda: randomise(PostNormEncoder(depth=2), 5), TOKENS,
                          lambda g: InsertPostNormBlock("stage0", (1, 2))),
}


def test_every_replayable_pass_has_an_example_here() -> None:
    assert set(EXAMPLES) == set(STRUCTURAL.values())


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.name)
def test_every_structural_pass_replays_from_its_spec_through_json_and_a_package(cls: type,
                                                                              tmp_path: pathlib.Path) -> None:
    factory, x, build = EXAMPLES[cls]
    model = factory()
    g = hs.trace(model, x)
    edited = build(g)(g)  # type: ignore[operator]
    assert [type(p) for p in edited.passes] == [cls]  # the history holds the pass itself
    again = replay(hs.trace(model, x), json.loads(json.dumps(specs(edited.passes))))
    assert again.dump() == edited.dump() and again.module.code == edited.module.code
    assert set(again.params) == set(edited.params)
    assert all(torch.equal(again.params[k], edited.params[k]) for k in edited.params)
    saved = read_package(hs.export.save(edited, tmp_path / "pkg")).passes
    assert replay(hs.trace(model, x), saved).dump() == edited.dump()


def test_the_history_is_the_passes_recorded_in_one_place() -> None:
    """Every pass class of the package goes through ``Recorded.__call__`` (none defines its own): a graph's
    ``passes`` are the pass values, in order, whether a pass runs alone or in a Pipeline; the calibration data
    a ResetBatchNorm read is not kept."""
    from hetsurgery.passes import ApplyPermutation, PadWidth, Pipeline, ResetBatchNorm, random_permutations
    from hetsurgery.passes.base import Recorded

    for cls in _pass_classes():
        if cls is not Pipeline:  # it runs passes, each of which records itself
            assert issubclass(cls, Recorded) and "__call__" not in vars(cls), cls.__name__
    g = hs.trace(randomise(hs.zoo.mlp([8, 8], batch_norm=True), 5), VECTORS)
    perm, pad, deeper = ApplyPermutation(random_permutations(g, 1)), PadWidth(1, 10), InsertIdentity("stage0", (1,))
    data = [torch.randn(16, 64)]
    out = Pipeline((perm, pad, ResetBatchNorm(data, max_samples=16)))(deeper(g))
    assert [type(p) for p in out.passes] == [InsertIdentity, ApplyPermutation, PadWidth, ResetBatchNorm]
    assert out.passes[:3] == (deeper, perm, pad) and out.passes[3].max_samples == 16 and out.passes[3].data == ()
    assert specs(out.passes) == [deeper.spec()] and g.passes == ()
