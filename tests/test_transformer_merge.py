"""Transformers merge as transformers: a head-permuted copy merges back exactly whatever the attention is written
as (``nn.MultiheadAttention``, separate q/k/v, a fused qkv projection, post-norm), folding norms keeps the
function, a LayerNorm'd stream zipped with a permuted copy of itself is itself, and REPAIR keeps a self-merge
exact and gives the layers it measures their target statistics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from decoder_models import Conv1DStack, PostNormEncoder, RotaryDecoder
from helpers import heads_reversed, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.merging.repair import levels, repair_layers, repair_targets
from hetsurgery.passes import ApplyPermutation, random_permutations
from hetsurgery.passes.fold_norms import FoldNorms
from hetsurgery.passes.repair_statistics import layer_moments
from hetsurgery.plan.width_plan import MatchKind

IMAGES = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 40, (4, 7), generator=torch.Generator().manual_seed(0))


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
    "mha": (lambda: hs.zoo.transformer("mha", depth=1, dim=16, heads=2), IMAGES),
    "separate-qkv": (lambda: hs.zoo.transformer("manual", depth=1, dim=16, heads=2), IMAGES),
    "gqa-rmsnorm": (lambda: RotaryDecoder(mode="sdpa", kv_heads=2, depth=1), IDS),
    "post-norm-fused-qkv": (lambda: PostNormEncoder(depth=1), IDS),
}


def _data(example: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    if example.is_floating_point():
        return [torch.randn(16, *example.shape[1:], generator=gen) for _ in range(4)]
    return [torch.randint(0, 40, (8, example.shape[1]), generator=gen) for _ in range(4)]


def _copy(model: nn.Module, example: torch.Tensor) -> tuple[hs.ModelGraph, nn.Module]:
    g = hs.trace(model, example)
    perms = heads_reversed(g, random_permutations(g, seed=3))
    return g, hs.to_module(ApplyPermutation(perms)(g)).eval()


@pytest.mark.parametrize("method", ["permute", "zip"])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_head_permuted_copy_merges_back_exactly(name: str, method: str) -> None:
    make, example = MODELS[name]
    model = _perturbed(make())
    g, copy = _copy(model, example)
    assert name == "mha" or any(grp.structure.moves for grp in g.groups)  # MHA's heads live inside one module
    own = dict(model.named_parameters())
    assert any(not torch.equal(t, own[n]) for n, t in copy.named_parameters() if n in own)
    with torch.no_grad():
        assert rel_err(model(example), copy(example)) <= 1e-5
    merged = hs.merge([model, copy], _data(example), method=method, progress=False).model
    with torch.no_grad():
        assert rel_err(model(example), merged(example)) <= 1e-4


FOLDING = {"separate-qkv": (MODELS["separate-qkv"][0], IMAGES), "mha": (MODELS["mha"][0], IMAGES),
           "gqa-rmsnorm": (MODELS["gqa-rmsnorm"][0], IDS), "fused-qkv-tied-embeddings": (lambda: Conv1DStack(), IDS)}


@pytest.mark.parametrize("name", list(FOLDING))
def test_folding_norms_keeps_the_function(name: str) -> None:
    make, example = FOLDING[name]
    model = _perturbed(make())
    folded = hs.to_module(FoldNorms()(hs.trace(model, example))).eval()
    norms = {n: t for n, t in folded.named_parameters() if ("ln" in n or "norm" in n) and n.endswith("weight")}
    if name != "gqa-rmsnorm":  # an RMSNorm written out as ops is not folded (fold_report finds no norm): exact only
        assert any(bool((t == 1).all()) for t in norms.values())  # some norm gave its scale to its readers
    if name == "separate-qkv":  # every norm of a pre-LN ViT folds
        assert all(bool((t == 1).all()) for t in norms.values())
    with torch.no_grad():
        assert rel_err(model(example), folded(example)) <= 1e-5


def test_a_layernormed_stream_zipped_with_a_permuted_copy_is_the_model() -> None:
    make, example = MODELS["separate-qkv"]
    model = _perturbed(make())
    _, copy = _copy(model, example)
    result = hs.merge([model, copy], _data(example), method="zip", repair=False, progress=False)
    assert any(m.kind is MatchKind.STREAM for m in result.plan.groups.values())  # the stream was zipped as one
    with torch.no_grad():
        assert rel_err(model(example), result.model(example)) <= 1e-4


def test_repair_keeps_a_self_merge_exact() -> None:
    make, example = MODELS["separate-qkv"]
    model = _perturbed(make())
    merged = hs.merge([model, model], _data(example), method="zip", repair=True, progress=False).model
    with torch.no_grad():
        assert rel_err(model(example), merged(example)) <= 1e-4


def test_repair_gives_the_first_layers_their_target_statistics() -> None:
    make, example = MODELS["separate-qkv"]
    a, b = _perturbed(make(), 0), _perturbed(make(), 1)
    data = _data(example)
    plain = hs.merge([a, b], data, method="zip", repair=False, progress=False)
    repaired = hs.merge([a, b], data, method="zip", repair=True, progress=False)
    layers = repair_layers(plain.graph)
    first = levels(plain.graph, layers)[0]
    graphs = [hs.trace(m, example) for m in (a, b)]
    from hetsurgery.merging.zip_plan import prepare_zip

    targets = repair_targets(prepare_zip(graphs), plain.plan, first, data, max_samples=None)
    before = layer_moments(plain.graph, first, data, None, None)
    after = layer_moments(repaired.graph, first, data, None, None)
    for name in first:
        want = targets[name][1]
        gap_before = (before[name][1] - want).abs().mean()
        gap_after = (after[name][1] - want).abs().mean()
        assert gap_after < 1e-3 * want.mean() + 1e-6 and gap_after < gap_before


def test_repair_gives_the_output_layer_the_weighted_mean_of_the_models_output_statistics() -> None:
    """The layer writing the model's output is repaired too: the merged outputs' per-channel mean and standard
    deviation on the data are the models' own, weighted by the merge weights (the output channels stay in place)."""
    make, example = MODELS["separate-qkv"]
    a, b = _perturbed(make(), 0), _perturbed(make(), 1)
    data = _data(example)
    weights = [0.3, 0.7]
    merged = hs.merge([a, b], data, method="zip", weights=weights, repair=True, progress=False)
    plain = hs.merge([a, b], data, method="zip", weights=weights, repair=False, progress=False)
    out = [n for n in repair_layers(merged.graph) if merged.graph.module.graph.find_nodes(op="output")[0]
           in _users_to_output(merged.graph, n)]
    assert len(out) == 1  # the head, besides the layers whose outputs are aligned channels
    graphs = [hs.trace(m, example) for m in (a, b)]
    stats = [layer_moments(g, out, data, None, None)[out[0]] for g in graphs]
    want_mean = sum(w * m for w, (m, _) in zip(weights, stats, strict=True))
    want_std = sum(w * s for w, (_, s) in zip(weights, stats, strict=True))
    got_mean, got_std = layer_moments(merged.graph, out, data, None, None)[out[0]]
    _, before_std = layer_moments(plain.graph, out, data, None, None)[out[0]]
    torch.testing.assert_close(got_std, want_std, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got_mean, want_mean, rtol=1e-3, atol=1e-4 * float(want_std.mean()))
    assert float((before_std - want_std).abs().max()) > 1e-2 * float(want_std.mean())  # there was a gap to close


def _users_to_output(g: hs.ModelGraph, name: str) -> list:
    """The nodes ``name`` reaches through ops without parameters (ending at the output node when it does)."""
    node = next(n for n in g.module.graph.nodes if n.name == name)
    seen, todo = [], list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen and n.op != "call_module":
            seen.append(n)
            todo.extend(n.users)
    return seen


def _with_a_head_copied(model: nn.Module, head: int) -> nn.Module:
    """Net2Net for heads: ``model`` with head ``head`` copied into a new last head, both halves of its output
    projection (the same function, one head more)."""
    from decoder_models import HeadsEncoder

    hd = model.hd
    wide = HeadsEncoder(model.heads + 1)
    state = dict(model.state_dict())
    at = slice(head * hd, (head + 1) * hd)
    for name in ("q", "k", "v"):
        state[f"{name}.weight"] = torch.cat([state[f"{name}.weight"], state[f"{name}.weight"][at]])
        state[f"{name}.bias"] = torch.cat([state[f"{name}.bias"], state[f"{name}.bias"][at]])
    o = state["o.weight"].clone()
    o[:, at] /= 2
    state["o.weight"] = torch.cat([o, o[:, at]], 1)
    wide.load_state_dict(state)
    return wide.eval()


def test_a_model_merged_with_itself_with_a_head_copied_comes_back() -> None:
    from decoder_models import HeadsEncoder

    torch.manual_seed(0)
    model = _perturbed(HeadsEncoder(2))
    wide = _with_a_head_copied(model, 0)
    with torch.no_grad():
        assert rel_err(model(IDS), wide(IDS)) <= 1e-5
    for models in ([model, wide], [wide, model]):
        r = hs.merge(models, _data(IDS), method="zip", progress=False)
        assert r.plan.anchor == models.index(wide)  # the merged model has the widest model's three heads
        assert r.graph.group(1).structure.count == 3
        with torch.no_grad():
            assert rel_err(model(IDS), r.model(IDS)) <= 1e-4


def test_heads_of_different_counts_merge_head_to_head() -> None:
    from decoder_models import HeadsEncoder

    from hetsurgery.passes.block_maps import block_order

    torch.manual_seed(0)
    small, big = _perturbed(HeadsEncoder(2), 1), _perturbed(HeadsEncoder(3), 2)
    r = hs.merge([small, big], _data(IDS), method="zip", progress=False)
    with torch.no_grad():
        out = r.model(IDS)
    assert out.shape == small(IDS).shape and bool(out.isfinite().all())
    heads = [grp for grp in r.graph.groups if grp.structure.moves]
    assert heads and all(grp.structure.count == 3 for grp in heads)
    for grp in heads:  # whole heads to whole heads, each head of a model in one merged head
        m = r.plan.groups[grp.id]
        assert m.info["head_clusters"] and sorted(h for c in m.info["head_clusters"] for h in c) == \
            [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
        for k, blocks in enumerate([hs.trace(small, IDS).group(grp.id).structure, grp.structure]):
            used = block_order(m.merge[k], blocks)
            assert not isinstance(used, str)
    # one model alone (weights 1, 0) in the other's three heads: itself, its heads carried whole
    for w in ((1.0, 0.0), (0.0, 1.0)):
        alone = hs.merge([small, big], _data(IDS), method="zip", weights=w, repair=False, progress=False).model
        with torch.no_grad():
            assert rel_err((small if w[0] else big)(IDS), alone(IDS)) <= 1e-4
    # the zoo ViT: 2 and 3 heads of 8 (streams of 16 and 24), with REPAIR
    a = _perturbed(hs.zoo.transformer("sdpa", depth=1, dim=16, heads=2))
    b = _perturbed(hs.zoo.transformer("sdpa", depth=1, dim=24, heads=3), 1)
    merged = hs.merge([a, b], _data(IMAGES), method="zip", progress=False).model
    with torch.no_grad():
        assert bool(merged(IMAGES).isfinite().all())


@pytest.mark.parametrize("method", ["permute", "ot", "mal"])
def test_heads_of_different_counts_say_which_method_merges_them(method: str) -> None:
    from decoder_models import HeadsEncoder

    with pytest.raises(hs.MergeInputError, match="zip"):
        hs.merge([HeadsEncoder(2), HeadsEncoder(3)], _data(IDS), method=method, progress=False)
