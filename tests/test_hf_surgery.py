"""Hugging Face models as first-class inputs and outputs: coverage of every family with heads as units, block
expansion (zero-residual blocks) that keeps the function and loads back as the model class with one more layer,
same-architecture merges whose weights load into the model class under the original names, a head-permuted copy
merged back exactly, and packages of exported graphs."""

from __future__ import annotations

import pathlib

import pytest
import torch
from helpers import heads_reversed, rel_err
from hf_models import FAMILIES, inputs, main_output, run, tiny
from torch import nn

import hetsurgery as hs
from hetsurgery import export
from hetsurgery.export.pretrained import state_dict_like, to_pretrained
from hetsurgery.passes import ApplyPermutation, InsertZeroResidual, random_permutations

pytest.importorskip("transformers")



@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_is_covered_with_its_heads_as_units(family: str) -> None:
    g = hs.trace(tiny(family), inputs(family, 2, 6))
    assert g.coverage() >= 0.95, g.summary()
    assert g.uncovered().keys() <= {n for n in g.params if "relative_attention_bias" in n}  # T5: behind torch.where
    heads = [grp for grp in g.groups if grp.structure.moves]
    assert heads and all(grp.heads_with for grp in heads)
    (stage,) = g.stages  # the layers are one stage of blocks
    assert len(stage.units) == 2


@pytest.mark.parametrize("family", ["llama", "gpt2", "vit"])
def test_block_expansion_keeps_the_function_and_loads_back(family: str, tmp_path: pathlib.Path) -> None:
    model = tiny(family)
    g = hs.trace(model, inputs(family, 2, 6))
    deeper = InsertZeroResidual(g.stages[0].key, (1,))(g)
    other = inputs(family, 3, 5, seed=1)
    with torch.no_grad():
        assert rel_err(main_output(run(model, other)), main_output(hs.to_module(deeper)(**other))) <= 1e-5
    expanded = to_pretrained(deeper, like=model)
    assert type(expanded) is type(model) and expanded.config.num_hidden_layers == model.config.num_hidden_layers + 1
    expanded.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert rel_err(main_output(run(model, other)), main_output(run(loaded, other))) <= 1e-5
    assert model.config.num_hidden_layers == 2  # the user's model and config are untouched


def test_post_norm_bert_refuses_block_expansion_with_the_reason() -> None:
    g = hs.trace(tiny("bert"), inputs("bert", 2, 6))
    with pytest.raises(hs.PassError, match="post-norm"):
        InsertZeroResidual(g.stages[0].key, (1,))(g)


def _batches(family: str) -> list[dict[str, torch.Tensor]]:
    return [inputs(family, b, s, seed=10 + i) for i, (b, s) in enumerate([(4, 6), (3, 9), (4, 5), (2, 7)])]


@pytest.mark.parametrize("method", ["permute", "zip"])
def test_a_llama_merge_loads_into_the_model_class_under_its_names(method: str, tmp_path: pathlib.Path) -> None:
    a, b = tiny("llama", 0), tiny("llama", 1)
    result = hs.merge([a, b], _batches("llama"), method=method, progress=False)
    assert set(state_dict_like(result.graph)) >= set(a.state_dict()) - {"lm_head.weight"}
    merged = result.to_pretrained(like=a)
    merged.save_pretrained(tmp_path)
    loaded = type(a).from_pretrained(tmp_path).eval()
    x = inputs("llama", 2, 7, seed=3)
    with torch.no_grad():
        assert rel_err(main_output(result.model(**x)), main_output(run(loaded, x))) <= 1e-5


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_head_permuted_copy_merges_back_exactly(family: str) -> None:
    model = tiny(family)
    g = hs.trace(model, inputs(family, 2, 6))
    perms = heads_reversed(g, random_permutations(g, seed=4))
    copy = to_pretrained(ApplyPermutation(perms)(g), like=model)  # the model class, its heads in another order
    moved = {n for n, t in copy.state_dict().items() if not torch.equal(t, model.state_dict()[n])}
    assert any("q_proj" in n or "query" in n for n in moved)
    merged = hs.merge([model, copy], _batches(family), method="permute", progress=False).model
    x = inputs(family, 3, 5, seed=2)
    with torch.no_grad():
        assert rel_err(main_output(run(model, x)), main_output(merged(**x))) <= 1e-5


def test_an_exported_graph_saves_as_a_package_that_loads_without_transformers(tmp_path: pathlib.Path) -> None:
    model = tiny("llama")
    g = hs.trace(model, inputs("llama", 2, 6))
    if any("vmap" in n for n, _ in g.module.named_modules()):  # transformers 4.57's masks run under torch.vmap
        with pytest.raises(hs.ExportError, match=r"torch\.vmap"):
            export.save(g, tmp_path / "pkg")
        return
    export.save(g, tmp_path / "pkg")
    loaded = export.load(tmp_path / "pkg")
    x = inputs("llama", 2, 6, seed=5)
    with torch.no_grad():
        out = loaded(**x)
    assert isinstance(out, dict) and rel_err(main_output(run(model, x)), out["logits"]) <= 1e-5
    assert "transformers" not in (tmp_path / "pkg" / "model.py").read_text()


def test_to_pretrained_refuses_a_structure_the_class_cannot_build() -> None:
    model = tiny("llama")
    g = hs.trace(model, inputs("llama", 2, 6))
    wider = export_like_wider(g)
    with pytest.raises(hs.ExportError, match="do not fit LlamaForCausalLM"):
        to_pretrained(wider, like=model)


def export_like_wider(g: hs.ModelGraph) -> hs.ModelGraph:
    """The MLP hidden group of layer 0 padded to a width the config cannot express alone (only one layer)."""
    from hetsurgery.passes import PadWidth

    hidden = next(grp for grp in g.groups
                  if any(s.param == "model.layers.0.mlp.up_proj.weight" and s.dim == 0 for s in grp.slots))
    return PadWidth(hidden.id, hidden.size + 4)(g)


@pytest.mark.parametrize("method", ["permute", "weight"])
def test_t5_heads_tied_to_their_one_column_bias_merge(method: str) -> None:
    model = tiny("t5-encoder")
    batches = _batches("t5-encoder")
    result = hs.merge([model, tiny("t5-encoder", 1)], batches, method=method, progress=False)
    x = inputs("t5-encoder", 2, 5, seed=3)
    with torch.no_grad():
        assert torch.isfinite(main_output(result.model(**x))).all()


def test_layers_inserted_first_keep_each_layers_own_settings(tmp_path: pathlib.Path) -> None:
    import transformers

    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                      sliding_window=2, max_window_layers=1)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    g = hs.trace(model, inputs("qwen2", 2, 6))
    deeper = to_pretrained(InsertZeroResidual(g.stages[0].key, (0,))(g), like=model)
    assert deeper.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    x = inputs("qwen2", 2, 7, seed=1)
    with torch.no_grad():
        assert rel_err(main_output(run(model, x)), main_output(run(deeper, x))) <= 1e-5


def test_to_pretrained_owns_its_tensors_and_changes_only_the_sizes_that_changed() -> None:
    model = tiny("llama")
    g = hs.trace(model, inputs("llama", 2, 6))
    back = to_pretrained(g, like=model)
    before = model.state_dict()["model.layers.0.mlp.up_proj.weight"].clone()
    with torch.no_grad():
        back.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert torch.equal(model.state_dict()["model.layers.0.mlp.up_proj.weight"], before)
    from hetsurgery.passes import PadWidth

    hidden = [grp for grp in g.groups
              if any(s.param.endswith("mlp.up_proj.weight") and s.dim == 0 for s in grp.slots)]
    wider = g
    for grp in hidden:
        wider = PadWidth(grp.id, model.config.vocab_size)(wider)  # a size another field holds too
    config = to_pretrained(wider, like=model).config
    assert config.intermediate_size == model.config.vocab_size != model.config.intermediate_size
    assert config.vocab_size == model.config.vocab_size and config.hidden_size == model.config.hidden_size


@pytest.mark.parametrize("method", ["average", "zip"])
def test_llamas_of_different_depth_merge(method: str) -> None:
    """The balanced shallow Llama corresponds to the deep one although its blocks' weights are named after other
    places and its inserted block reads its neighbour's rotary ``unsqueeze`` (one node for two of the deep model's)."""
    from hf_models import T, V

    def llama(layers: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                num_hidden_layers=layers, num_attention_heads=4,
                                                num_key_value_heads=2, max_position_embeddings=32)).eval()

    deep, shallow = llama(3, 0), llama(1, 1)
    result = hs.merge([deep, shallow], _batches("llama"), method=method, depth="lma", progress=False)
    x = inputs("llama", 2, 7, seed=3)
    with torch.no_grad():
        out = main_output(result.model(**x))
    assert out.shape == main_output(run(deep, x)).shape and bool(out.isfinite().all())
