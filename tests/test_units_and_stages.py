"""Units and stages are found from the dataflow graph: expected counts on the zoo and on outside models,
and the node facts (ranges, activations, groups) the structural passes rely on."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from outside_models import ConvChain, FusedQKVViT, PreActResNet

import hetsurgery as hs
from hetsurgery.ir import Activation, OpKind, UnitKind

X = torch.randn(2, 1, 8, 8)


def _stages(g: hs.ModelGraph) -> list[tuple[str, int, list[bool]]]:
    """Per stage: kind, unit count, which units are fixed."""
    return [(st.kind.value, len(st), [g.unit(k).fixed is not None for k in st.units]) for st in g.stages]


@pytest.mark.parametrize("hidden", [[8], [8, 6], [8, 8, 8, 8, 8]])
def test_an_mlp_with_h_hidden_layers_has_one_stage_of_h_units(hidden: list[int]) -> None:
    g = hs.trace(hs.zoo.mlp(hidden), torch.randn(2, 64))
    assert _stages(g) == [("layer", len(hidden), [True] + [False] * (len(hidden) - 1))]  # the first reads the input
    head = g.units[-1]
    assert head.key == f"layers_{2 * len(hidden)}" and head.fixed == "writes the model output"


def test_a_vgg_has_a_stage_per_pooling_block_and_one_for_the_classifier() -> None:
    g = hs.trace(hs.zoo.vgg(), X)  # [16, 16, M, 32, 32, M, 64, 64], then Linear-ReLU, Linear
    assert _stages(g) == [("layer", 2, [True, False]), ("layer", 2, [False, False]), ("layer", 2, [False, False]),
                          ("layer", 1, [False])]
    unit = g.unit(g.stages[1].units[0])
    assert [g.facts[n].kind for n in unit.nodes] == [OpKind.CONV, OpKind.BATCH_NORM, OpKind.ELEMENTWISE]
    assert unit.pre == unit.nodes[1]  # the BatchNorm's output: the pre-activation CLA compares


@pytest.mark.parametrize(("factory", "blocks"), [(hs.zoo.resnet20, 3), (hs.zoo.resnet32, 5)])
def test_a_resnet_has_three_block_stages_whose_strided_first_blocks_are_fixed(factory: object, blocks: int) -> None:
    g = hs.trace(factory(), X)  # type: ignore[operator]
    assert _stages(g) == [("block", blocks, [False] * blocks), ("block", blocks, [True] + [False] * (blocks - 1)),
                          ("block", blocks, [True] + [False] * (blocks - 1))]
    stem, head = g.unit("conv1"), g.unit("linear")
    assert stem.kind is UnitKind.LAYER and stem.fixed == "reads the model input"
    assert head.fixed == "writes the model output"
    block = g.unit("layer1_1_conv1")
    assert block.kind is UnitKind.BLOCK and g.facts[block.pre].kind is OpKind.BINARY  # the add, before the ReLU
    assert g.facts[block.exit].activation is Activation.RELU


@pytest.mark.parametrize("attention", ["manual", "sdpa", "mha"])
@pytest.mark.parametrize("depth", [1, 3])
def test_a_transformer_of_depth_d_has_one_stage_of_d_blocks(attention: str, depth: int) -> None:
    """A block's attention half and MLP half repeat with period two: one unit each pair."""
    g = hs.trace(hs.zoo.transformer(attention, depth=depth), X)
    assert _stages(g) == [("block", depth, [False] * depth)]
    unit = g.unit(g.stages[0].units[0])
    adds = [n for n in unit.nodes if g.facts[n].kind is OpKind.BINARY and "add" in n]
    assert len(adds) == 2 and unit.pre == adds[-1] == unit.exit


def test_densenet_and_mobilenet_counts() -> None:
    """Documented in hetsurgery.tracing.units: a DenseNet's concat-fed layers are one-layer stages; a
    MobileNet has a block stage per run of inverted residuals."""
    dense = hs.trace(hs.zoo.densenet(), X)
    assert [len(st) for st in dense.stages] == [1] * 8
    mobile = hs.trace(hs.zoo.mobilenet(), X)
    assert [(st.kind.value, len(st)) for st in mobile.stages if st.kind is UnitKind.BLOCK] == \
        [("block", 2), ("block", 1), ("block", 1)]


def test_outside_models() -> None:
    assert _stages(hs.trace(ConvChain(), X)) == [("layer", 3, [True, False, False])]
    assert _stages(hs.trace(PreActResNet(blocks=4), X)) == [("block", 4, [False] * 4)]
    assert _stages(hs.trace(FusedQKVViT(depth=3), X)) == [("block", 3, [False] * 3)]


def test_dataflow_records_kinds_ranges_activations_and_groups() -> None:
    g = hs.trace(hs.zoo.resnet20(), X)
    flow = g.dataflow()
    assert nx.is_directed_acyclic_graph(flow)
    relu = flow.nodes["relu"]
    assert relu["kind"] is OpKind.ELEMENTWISE and relu["activation"] is Activation.RELU and relu["nonneg"]
    assert not flow.nodes["bn1"]["nonneg"] and flow.nodes["bn1"]["activation"] is None
    add = flow.nodes["add"]  # ReLU output + BN output: nothing known
    assert add["range"].lo == float("-inf") and not add["nonneg"]
    assert flow.nodes["conv1"]["writes"] == (0,) and flow.nodes["layer1_0_conv1"]["reads"] == (0,)
    assert flow.nodes["layer1_1_conv1"]["unit"] == "layer1_1_conv1"
    pooled = next(n for n, d in flow.nodes(data=True) if d["kind"] is OpKind.SPATIAL)
    assert flow.nodes[pooled]["nonneg"]  # average pooling of ReLU outputs stays non-negative


def test_the_bipartite_view_is_a_projection_of_the_dataflow() -> None:
    g = hs.trace(hs.zoo.mlp([8, 6]), torch.randn(2, 64))
    dg = g.to_networkx()
    assert set(dg.successors(("layer", "layers.0"))) == {("group", 0)}
    assert set(dg.predecessors(("layer", "layers.2"))) == {("group", 0)}
    assert set(dg.successors(("layer", "layers.2"))) == {("group", 1)}
