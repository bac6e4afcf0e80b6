"""A sharded checkpoint whose shard is missing or cut short fails with a one-line error naming the file, before any
work, and writes nothing; a checkpoint is read one tensor (or rows of one) at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hetsurgery import stream
from hetsurgery.export.errors import InputError
from hetsurgery.passes import InsertZeroResidual
from hetsurgery.stream.checkpoint import INDEX, Checkpoint
from tests.hf_models import T


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
    model.save_pretrained(root / "a", max_shard_size="20KB")
    return root / "a"


def _broken(sharded: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    copy = tmp_path / "broken"
    shutil.copytree(sharded, copy)
    shard = sorted(copy.glob("model-*.safetensors"))[1]
    if how == "missing":
        shard.unlink()
    else:
        data = shard.read_bytes()
        shard.write_bytes(data[:len(data) - 100])
    return copy, shard


@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("run", ["merge", "apply"])
def test_a_broken_shard_is_one_line_naming_the_file_and_nothing_is_written(sharded: Path, tmp_path: Path, how: str,
                                                                          run: str) -> None:
    broken, shard = _broken(sharded, tmp_path, how)
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        if run == "merge":
            stream.merge([sharded, broken], None, out, method="average", progress=False)
        else:
            stream.apply(broken, [InsertZeroResidual("stage0", (1,))], out, progress=False)
    message = str(err.value)
    assert "\n" not in message and str(shard) in message and ("missing" if how == "missing" else "truncated") in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_folder_without_weights_says_how_to_save_them(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="save_pretrained"):
        Checkpoint.open(tmp_path)


def test_tensors_are_read_one_at_a_time_and_by_rows(sharded: Path) -> None:
    ckpt = Checkpoint.open(sharded / INDEX)
    name = "model.embed_tokens.weight"
    whole = ckpt.read(name)
    assert ckpt.shape(name) == (64, 32) and torch.equal(ckpt.read(name, rows=(3, 9)), whole[3:9])
    assert ckpt.read(name, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ckpt.nbytes == sum(e.nbytes for e in ckpt.entries.values()) > 0
