"""Package round trip of the outside-style models: ``save`` a traced graph (wrapped functions inlined), ``load``
it back from ``graph.json`` through the allow-list, same outputs. A plain module whose forward calls a
wrapped function of its own is refused with a message that says to trace it first."""

from __future__ import annotations

import pathlib

import outside_models as om
import pytest
import torch
from helpers import randomise, rel_err

import hetsurgery as hs
from hetsurgery.errors import ExportError
from hetsurgery.export import load, save

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
MODELS = {"convnext": om.TinyConvNeXt, "swin": om.TinySwin, "shufflenet": om.TinyShuffleNet,
          "efficientnet": om.TinyEfficientNet, "chunk-vit": om.ChunkViT, "maxvit": om.TinyMaxViT,
          "fused-qkv-vit": om.FusedQKVViT}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_traced_model_comes_back_from_its_package(name: str, tmp_path: pathlib.Path) -> None:
    model = randomise(MODELS[name](), seed=1)
    folder = save(hs.trace(model, X), tmp_path / "pkg")
    back = load(folder)
    with torch.no_grad():
        assert rel_err(model(X), back(X)) <= 1e-6


def test_a_module_calling_a_wrapped_function_is_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ExportError, match=r"stochastic_depth.*inlined"):
        save(om.TinyEfficientNet().eval(), tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()
