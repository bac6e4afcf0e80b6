"""Hugging Face models through the torch.export front end: tiny random models built from configs (nothing is
downloaded) of nine families trace (torch.fx fails on each, torch.export takes over and the graph says why),
keep their parameter names, compute the model's output on batches of another size and length (also with every
permutable group permuted), lift from an ``ExportedProgram`` to the same groups, leave the model as it was,
merge from dict batches and export to ONNX.

Coverage per family is asserted in ``test_hf_surgery.py`` (at least 0.95, heads permuted as units).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
from helpers import rel_err
from hf_models import FAMILIES, V, inputs, main_output, run, tiny
from torch import nn

import hetsurgery as hs
from hetsurgery.export import to_onnx
from hetsurgery.ir import FrontEndKind
from hetsurgery.passes import ApplyPermutation, random_permutations

pytest.importorskip("transformers")


def own_names(model: nn.Module) -> set[str]:
    """The model's ``state_dict`` names and its buffers that are not part of it (a rotary ``inv_freq``)."""
    return set(model.state_dict()) | {n for n, _ in model.named_buffers(remove_duplicate=False)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_traces_through_torch_export_and_computes_the_models_output(family: str) -> None:
    model = tiny(family)
    g = hs.trace(model, inputs(family, 2, 7))
    print(f"\n{family}: " + "\n".join(g.summary().splitlines()[:2]))
    assert g.front_end.kind is FrontEndKind.EXPORT and g.front_end.reason.startswith("torch.fx failed: ")
    assert "/hetsurgery/tracing/" not in g.front_end.reason  # the line fx failed on is transformers', not ours
    assert set(g.params) <= own_names(model)
    assert g.groups and (g.coverage() > 0 or "torch.addmm" in g.summary())  # GPT-2's Conv1D: named until its rule
    other = inputs(family, 3, 5, seed=1)  # another batch size and sequence length than the example's
    moved = hs.to_module(ApplyPermutation(random_permutations(g, 3))(g))  # every permutable group
    with torch.no_grad():
        want, got = run(model, other), hs.to_module(g)(**other)
        assert rel_err(main_output(want), main_output(moved(**other))) <= 1e-5
    assert type(got) is type(want) and list(got.keys()) == list(want.keys())
    assert rel_err(main_output(want), main_output(got)) <= 1e-5


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_an_exported_program_lifts_to_the_groups_of_the_model(family: str) -> None:
    model = tiny(family)
    kw: dict[str, Any] = {**inputs(family, 2, 7), "use_cache": False}
    dims = {k: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} if isinstance(v, torch.Tensor) else None
            for k, v in kw.items()}
    ep = torch.export.export(model, (), kw, dynamic_shapes=dims, strict=False)
    g = hs.trace(ep, kw)
    assert g.front_end.reason == "given an ExportedProgram" and g.name == type(model).__name__
    assert g.dump() == hs.trace(model, inputs(family, 2, 7)).dump()
    assert set(g.params) <= own_names(model)
    other = inputs(family, 4, 3, seed=2)
    with torch.no_grad():
        assert rel_err(main_output(run(model, other)), main_output(hs.to_module(g)(**other))) <= 1e-5


def test_tracing_leaves_the_hugging_face_model_as_it_was() -> None:
    model = tiny("llama").train()
    flags = {name: m.training for name, m in model.named_modules()}
    config = model.config.to_dict()
    before = {k: (t, t.clone()) for k, t in model.state_dict(keep_vars=True).items()}
    hs.trace(model, inputs("llama", 2, 7))
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert model.config.to_dict() == config
    after = model.state_dict(keep_vars=True)
    assert all(after[k] is t and torch.equal(t, copy) for k, (t, copy) in before.items())


def _batches(family: str) -> list[dict[str, torch.Tensor]]:
    """Dict batches of varying batch size and length, with labels the traced graphs take no input for."""
    out = []
    for i, (b, s) in enumerate([(3, 6), (2, 9), (4, 5), (3, 7)]):
        batch = inputs(family, b, s, seed=10 + i)
        out.append({**batch, "labels": torch.randint(0, V, (b, s), generator=torch.Generator().manual_seed(i))})
    return out


@pytest.mark.parametrize(("family", "method"), [("bert", "permute"), ("llama", "average"), ("llama", "permute")])
def test_dict_batches_feed_a_merge_of_two_exported_models(family: str, method: str) -> None:
    batches = _batches(family)
    result = hs.merge([tiny(family, 0), tiny(family, 1)], batches, method=method, progress=False)
    assert result.graph.front_end.kind is FrontEndKind.EXPORT
    probe = {k: v for k, v in batches[1].items() if k != "labels"}
    with torch.no_grad():
        out = result.model(**probe)
    assert main_output(out).shape[:2] == probe["input_ids"].shape and torch.isfinite(main_output(out)).all()


def test_a_model_merged_with_itself_from_dict_batches_is_the_model() -> None:
    model = tiny("bert")
    result = hs.merge([model, model], _batches("bert"), method="permute", progress=False)
    other = inputs("bert", 3, 8, seed=5)
    with torch.no_grad():
        assert rel_err(main_output(model(**other)), main_output(result.model(**other))) <= 1e-5


def test_an_exported_llama_exports_to_onnx_with_parity(tmp_path: pathlib.Path) -> None:
    g = hs.trace(tiny("llama"), inputs("llama", 2, 7))
    report = to_onnx(g, g.example_inputs, tmp_path / "llama.onnx")
    assert report.passed and report.checked and report.batch_sizes == (2, 5), str(report)
