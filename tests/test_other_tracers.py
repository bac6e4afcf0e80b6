"""Graphs made by other tracers: ``hs.trace`` lifts an ``fx.GraphModule`` as it is, without tracing it again."""

from __future__ import annotations

import pathlib

import pytest
import torch
from helpers import randomise, rel_err
from torch import fx, nn

import hetsurgery as hs
from hetsurgery.export import to_onnx
from hetsurgery.passes import ApplyPermutation, random_permutations


class Gate(nn.Module):
    """Branches on a Python flag; kept as a leaf by the tracer below (plain fx would trace into it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b, self.c = nn.Conv2d(1, 6, 3, padding=1), Gate(), nn.BatchNorm2d(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        h = self.b(self.gate(self.a(x)))
        h = h.mean((2, 3)) if pool == "mean" else h.amax((2, 3))  # decided by a concrete argument
        return self.c(h)


class LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, Gate) or super().is_leaf_module(m, qualified_name)


def _exact(model: nn.Module, g: hs.ModelGraph, *inputs: torch.Tensor) -> float:
    moved = hs.to_module(ApplyPermutation(random_permutations(g, 1))(g))
    with torch.no_grad():
        return rel_err(model(*inputs), moved(*inputs))


def test_a_graph_from_a_custom_tracer_with_a_leaf_and_concrete_args() -> None:
    model = randomise(Net())
    gm = fx.GraphModule(model, LeafTracer().trace(model, concrete_args={"pool": "mean"}))
    assert any(n.op == "call_module" and n.target == "gate" for n in gm.graph.nodes)
    x = torch.randn(4, 1, 5, 5)
    g = hs.trace(gm, x)
    assert g.coverage() == 1.0 and _exact(gm, g, x) <= 1e-5
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert "probed module" in a.label  # the leaf is a module no rule knows: the probe passed it
    assert [n.target for n in g.module.graph.nodes] == [n.target for n in gm.graph.nodes]  # not traced again


def test_a_tiny_bert_traced_by_hugging_face() -> None:
    transformers = pytest.importorskip("transformers")
    symbolic_trace = pytest.importorskip("transformers.utils.fx", reason="transformers 5 removed transformers.utils.fx; "
                                         "trace Hugging Face models with hs.trace (torch.export)").symbolic_trace

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()  # random weights: nothing is downloaded
    gm = symbolic_trace(model, input_names=["input_ids", "attention_mask"])
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    g = hs.trace(gm, (ids, mask))
    assert g.coverage() >= 0.95, g.summary()
    moved = hs.to_module(ApplyPermutation(random_permutations(g, 1))(g))
    with torch.no_grad():
        assert rel_err(gm(ids, mask)["logits"], moved(ids, mask)["logits"]) <= 1e-5
    heads = [grp for grp in g.groups if grp.structure == hs.Blocks(2, 8, moves=True)]
    assert len(heads) == 4 and all(grp.perm_ok for grp in heads)  # q/k and v of each layer
    stream = next(grp for grp in g.groups if hs.Slot("bert.embeddings.word_embeddings.weight", 1) in grp.slots)
    assert stream.perm_ok and not stream.pad_ok  # LayerNorm over the hidden size


def test_a_tiny_bert_traced_by_hugging_face_exports_to_onnx_with_parity(tmp_path: pathlib.Path) -> None:
    transformers = pytest.importorskip("transformers")
    symbolic_trace = pytest.importorskip("transformers.utils.fx", reason="transformers 5 removed transformers.utils.fx"
                                         ).symbolic_trace
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    gm = symbolic_trace(transformers.BertForSequenceClassification(config).eval(),
                        input_names=["input_ids", "attention_mask"])
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    g = hs.trace(gm, {"input_ids": ids, "attention_mask": torch.ones(3, 7, dtype=torch.long)})
    assert g.front_end.kind is hs.ir.FrontEndKind.GRAPH
    report = to_onnx(g, g.example_inputs, tmp_path / "bert.onnx")
    assert report.passed and report.checked, str(report)
