"""Tiny Hugging Face models built from configs (random weights, nothing downloaded), for the tests.

``transformers`` is the optional extra ``hf``: importing this module without it skips the tests that do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
T = transformers
V = 64  # vocabulary

FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "bert": lambda: T.BertModel(T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=48, max_position_embeddings=32)),
    "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4,
                                                               hidden_dim=48, max_position_embeddings=32)),
    "roberta": lambda: T.RobertaModel(T.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=48,
                                                      max_position_embeddings=40)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                   bos_token_id=0, eos_token_id=0)),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, max_position_embeddings=32)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, max_position_embeddings=32)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, max_position_embeddings=32)),
    "vit": lambda: T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=48, image_size=16, patch_size=4, num_channels=3)),
    "t5-encoder": lambda: T.T5EncoderModel(T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                      num_heads=4)),
}


def tiny(family: str, seed: int = 0) -> nn.Module:
    """A random model of ``family``, every floating tensor moved away from its initial value (LayerNorm at 1
    and biases at 0 would hide a wrong permutation), in eval mode."""
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def inputs(family: str, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=gen)}
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0  # padding in one sequence
    return {"input_ids": torch.randint(0, V, (batch, length), generator=gen), "attention_mask": mask}


def run(model: nn.Module, kw: dict[str, torch.Tensor]) -> Any:
    """The model's output as traced: without its cache (``trace`` passes ``use_cache=False`` when it is taken)."""
    takes_cache = "use_cache" in inspect.signature(model.forward).parameters
    return model(**kw, **({"use_cache": False} if takes_cache else {}))


def main_output(out: Any) -> torch.Tensor:
    return out["logits"] if "logits" in out else out["last_hidden_state"]


