"""Streamed merges and surgery equal the in-memory ones exactly: tiny Llamas saved as sharded safetensors, merged by
``hetsurgery.stream`` (read tensor by tensor, statistics block by block, written shard by shard) and by
``hetsurgery.merge``; the written checkpoint loads with ``from_pretrained`` and holds the same tensors, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hetsurgery import merge, stream, trace
from hetsurgery.errors import MergeInputError
from hetsurgery.export import to_pretrained
from hetsurgery.export.errors import InputError
from hetsurgery.passes import InsertZeroResidual, RemoveBlock
from hetsurgery.stream.checkpoint import INDEX
from tests.hf_models import T

V = 64


def llama(seed: int, intermediate: int = 48) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=intermediate,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=32)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("stream")
    models = {"a": llama(0), "b": llama(1), "narrow": llama(2, intermediate=40)}
    for name, m in models.items():
        m.save_pretrained(root / name, max_shard_size="20KB")  # several shards and an index
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, V, (4, 8), generator=gen), "attention_mask": torch.ones(4, 8,
             dtype=torch.long)} for _ in range(3)]
    return {"root": root, "data": data, **models}


@pytest.fixture(scope="module")
def mal_pad_narrow(saved: dict) -> dict[str, torch.Tensor]:
    """The in-memory ``mal-pad`` merge of ``a`` with ``narrow``, as ``a``'s class's state dict (three tests compare
    streamed merges with it; each merge traces both Llamas with torch.export, a few seconds)."""
    r = merge([saved["a"], saved["narrow"]], None, method="mal-pad", example_inputs=saved["data"][0], progress=False)
    return r.to_pretrained(like=saved["a"]).state_dict()


def _same(want: dict[str, torch.Tensor], folder: Path) -> None:
    got = T.LlamaForCausalLM.from_pretrained(folder).state_dict()
    assert set(got) == set(want)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


@pytest.mark.parametrize("method", ["average", "weight", "permute", "zip"])
def test_streamed_merge_equals_the_merge_in_memory(saved: dict, method: str, tmp_path: Path) -> None:
    root, a, b, data = saved["root"], saved["a"], saved["b"], saved["data"]
    assert (root / "a" / INDEX).is_file()
    r = merge([a, b], data, method=method, progress=False, repair=False)  # a streamed merge does not REPAIR
    out = stream.merge([root / "a", root / "b"], data, tmp_path / "merged", method=method, progress=False,
                       segment_bytes=4096)  # several segments per block
    _same(r.to_pretrained(like=a).state_dict(), out.path)
    if method != "average":  # average of one architecture needs no plan
        assert out.plan is not None and out.plan.groups.keys() == r.plan.groups.keys()


def test_streamed_mal_pad_with_a_narrower_model(saved: dict, mal_pad_narrow: dict, tmp_path: Path) -> None:
    root, data = saved["root"], saved["data"]
    out = stream.merge([root / "a", root / "narrow"], None, tmp_path / "malpad", method="mal-pad",
                       example_inputs=data[0], progress=False, shard_bytes=10_000)
    assert len(list(out.path.glob("*.safetensors"))) > 1
    _same(mal_pad_narrow, out.path)


@pytest.mark.parametrize("method", ["mal-pad", "weight"])
def test_large_tensors_are_read_a_block_of_rows_at_a_time(saved: dict, mal_pad_narrow: dict, method: str,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pieces and chunks smaller than the embedding, weight matching and the writing read it from the
    checkpoint a block of rows at a time, never whole, and the output is still the merge in memory."""
    import hetsurgery.plan.solvers.weight as weight
    import hetsurgery.stream.driver as driver
    from hetsurgery.stream.checkpoint import Checkpoint

    monkeypatch.setattr(weight, "PIECE", 256)
    monkeypatch.setattr(driver, "CHUNK", 512)
    reads: list[tuple[str, tuple[int, int] | None]] = []
    read = Checkpoint.read

    def spy(self: Checkpoint, name: str, **kw: object) -> torch.Tensor:
        reads.append((name, kw.get("rows")))  # type: ignore[arg-type]
        return read(self, name, **kw)  # type: ignore[arg-type]

    root, a, data = saved["root"], saved["a"], saved["data"]
    if method == "mal-pad":
        want = mal_pad_narrow
    else:
        want = merge([a, saved["b"]], None, method=method, example_inputs=data[0], progress=False).to_pretrained(
            like=a).state_dict()
    monkeypatch.setattr(Checkpoint, "read", spy)
    out = stream.merge([root / "a", root / "narrow" if method == "mal-pad" else root / "b"], None,
                       tmp_path / "merged", method=method, example_inputs=data[0], progress=False)
    _same(want, out.path)
    embedding = [rows for name, rows in reads if name == "model.embed_tokens.weight"]
    assert len(embedding) > 4 and None not in embedding  # 64 rows of 32: pieces of 8, chunks of 16 rows


def test_streamed_mal_pad_of_bfloat16_checkpoints(saved: dict, tmp_path: Path) -> None:
    """Weight matching reads bfloat16 checkpoints as stored and widens each piece itself: the plan and the output
    are those of the in-memory merge of the same weights in float32, written in bfloat16."""
    data = saved["data"]
    models = {"a": llama(0).bfloat16(), "narrow": llama(2, intermediate=40).bfloat16()}
    for name, m in models.items():
        m.save_pretrained(tmp_path / name, max_shard_size="20KB")
    wide = [m.float() for m in models.values()]  # the same values, in float32
    r = merge(wide, None, method="mal-pad", example_inputs=data[0], progress=False)
    out = stream.merge([tmp_path / "a", tmp_path / "narrow"], None, tmp_path / "malpad", method="mal-pad",
                       example_inputs=data[0], progress=False)
    want = {k: v.to(torch.bfloat16) for k, v in r.to_pretrained(like=wide[0]).state_dict().items()}
    got = T.LlamaForCausalLM.from_pretrained(out.path, dtype=torch.bfloat16).state_dict()
    assert set(got) == set(want)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_a_config_saved_on_its_own_takes_the_class_of_the_model_it_is_merged_with(saved: dict, mal_pad_narrow: dict,
                                                                                  tmp_path: Path) -> None:
    """``config.save_pretrained`` writes no ``architectures``: alone, such a checkpoint describes the bare model and
    its head's tensors are refused in one line; merged with a model of a class that takes its config, it is that
    class."""
    import json
    import shutil

    root, data = saved["root"], saved["data"]
    headless = tmp_path / "narrow"
    shutil.copytree(root / "narrow", headless)
    config = json.loads((headless / "config.json").read_text())
    del config["architectures"]
    (headless / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"names no architecture.*model\.embed_tokens\.weight") as err:
        stream.StreamedModel.open(headless, data[0])
    assert "\n" not in str(err.value)
    kw = {"example_inputs": data[0], "progress": False}
    out = stream.merge([root / "a", headless], None, tmp_path / "malpad", method="mal-pad", **kw)
    _same(mal_pad_narrow, out.path)  # the streamed merge of the checkpoint that names its class is this too


def test_streamed_block_expansion_and_slicing(saved: dict, tmp_path: Path) -> None:
    root, a, data = saved["root"], saved["a"], saved["data"]
    passes = [InsertZeroResidual("stage0", (1, 2)), RemoveBlock(("model_layers_0_self_attn_q_proj",))]
    g = trace(a, data[0])
    for p in passes:
        g = p(g)
    out = stream.apply(root / "a", passes, tmp_path / "expanded", example_inputs=data[0], progress=False)
    _same(to_pretrained(g, like=a).state_dict(), out.path)
    expanded = stream.apply(root / "a", passes[:1], tmp_path / "deeper", example_inputs=data[0], progress=False)
    model = T.LlamaForCausalLM.from_pretrained(expanded.path)
    assert model.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.equal(model(**data[1]).logits, a(**data[1]).logits)


def test_streamed_merge_writes_the_dtype_asked_for(saved: dict, tmp_path: Path) -> None:
    root = saved["root"]
    out = stream.merge([root / "a", root / "b"], None, tmp_path / "half", method="average", dtype=torch.bfloat16,
                       progress=False)
    model = T.LlamaForCausalLM.from_pretrained(out.path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("keywords", [{"repair": True}, {"depth": "cla"}])
def test_streamed_merge_refuses_what_only_runs_in_memory(saved: dict, keywords: dict, tmp_path: Path) -> None:
    root, data = saved["root"], saved["data"]
    name = next(iter(keywords))
    with pytest.raises(MergeInputError, match=f"{name}= is for hs.merge, in memory"):
        stream.merge([root / "a", root / "b"], data, tmp_path / "merged", method="permute", progress=False, **keywords)
    assert not (tmp_path / "merged").exists()
