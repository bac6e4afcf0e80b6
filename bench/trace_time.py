"""Trace and lift time of Hugging Face models through the torch.export front end, per family and size.

Random models built from configs (nothing is downloaded): a tiny size (hidden 32, 2 layers, as the tests)
and a moderate one (hidden 256, 4 layers, 8 heads). ``hs.trace`` is timed whole (the median of three runs),
and its parts once each: torch.fx's attempt (which fails on every family), ``torch.export.export``, the
normalisation into torch-level calls, and ``lift_graph`` (shapes, channel rules, units). Needs the ``hf``
extra.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import hetsurgery as hs
from bench.report import machine, write_section
from hetsurgery.tracing.export_front import export_program, normalise
from hetsurgery.tracing.lift import lift_graph, structural_copy

ROUNDS = 3
VOCAB = 256


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inner: int


SIZES = (Size("tiny", 32, 2, 4, 2, 48), Size("hidden 256, 4 layers", 256, 4, 8, 4, 688))


def families() -> dict[str, Callable[[Size], nn.Module]]:
    import transformers as T

    def causal(config_cls: Any, model_cls: Any) -> Callable[[Size], nn.Module]:
        return lambda s: model_cls(config_cls(vocab_size=VOCAB, hidden_size=s.hidden, intermediate_size=s.inner,
                                              num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                              num_key_value_heads=s.kv_heads, max_position_embeddings=128))
    return {
        "BERT": lambda s: T.BertModel(T.BertConfig(vocab_size=VOCAB, hidden_size=s.hidden, num_hidden_layers=s.layers,
                                                   num_attention_heads=s.heads, intermediate_size=s.inner,
                                                   max_position_embeddings=128)),
        "DistilBERT": lambda s: T.DistilBertModel(T.DistilBertConfig(vocab_size=VOCAB, dim=s.hidden, n_layers=s.layers,
                                                                     n_heads=s.heads, hidden_dim=s.inner,
                                                                     max_position_embeddings=128)),
        "RoBERTa": lambda s: T.RobertaModel(T.RobertaConfig(vocab_size=VOCAB, hidden_size=s.hidden,
                                                            num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                                            intermediate_size=s.inner, max_position_embeddings=130)),
        "GPT-2": lambda s: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=s.hidden, n_layer=s.layers,
                                                          n_head=s.heads, n_positions=128, bos_token_id=0,
                                                          eos_token_id=0)),
        "Llama": causal(T.LlamaConfig, T.LlamaForCausalLM),
        "Qwen2": causal(T.Qwen2Config, T.Qwen2ForCausalLM),
        "Mistral": causal(T.MistralConfig, T.MistralForCausalLM),
        "ViT": lambda s: T.ViTModel(T.ViTConfig(hidden_size=s.hidden, num_hidden_layers=s.layers,
                                                num_attention_heads=s.heads, intermediate_size=s.inner,
                                                image_size=32, patch_size=4, num_channels=3)),
        "T5 encoder": lambda s: T.T5EncoderModel(T.T5Config(vocab_size=VOCAB, d_model=s.hidden, d_kv=s.hidden // s.heads,
                                                            d_ff=s.inner, num_layers=s.layers, num_heads=s.heads)),
    }


def example(family: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if family == "ViT":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=gen)}
    return {"input_ids": torch.randint(0, VOCAB, (2, 16), generator=gen), "attention_mask": torch.ones(2, 16, dtype=torch.long)}


def _clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(family: str, build: Callable[[Size], nn.Module], size: Size) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build(size).eval()
    kw = example(family)
    totals, g = [], None
    for _ in range(ROUNDS):
        seconds, g = _clock(lambda: hs.trace(model, kw))
        totals.append(seconds)
    assert g is not None
    fx_seconds, _ = _clock(lambda: _fails(lambda: hs.trace(model, kw, frontend="fx")))
    root = structural_copy(model)
    given = {**kw, **({"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {})}
    export_seconds, (ep, _) = _clock(lambda: export_program(root, (), given, family))
    normalise_seconds, (gm, _) = _clock(lambda: normalise(ep, root, family))
    lift_seconds, _ = _clock(lambda: lift_graph(gm, g.example_inputs, family))
    return {"family": family, "size": size.name, "params": sum(p.numel() for p in model.parameters()),
            "front end": g.front_end.kind.value, "aten nodes": len(ep.graph.nodes), "nodes": len(g.module.graph.nodes),
            "groups": len(g.groups), "coverage": g.coverage(), "trace": statistics.median(totals), "fx": fx_seconds,
            "export": export_seconds, "normalise": normalise_seconds, "lift": lift_seconds}


def _fails(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except hs.TracingError:
        return
    raise AssertionError("torch.fx traced a model expected to need torch.export")


def section(rows: list[dict[str, Any]]) -> str:
    import transformers

    lines = ["## Tracing Hugging Face models", "",
             f"`hs.trace(model, {{input_ids, attention_mask}})` (ViT: `pixel_values`, 2×3×32×32) on random models "
             f"built from configs, transformers {transformers.__version__}: torch.fx fails on each family and "
             "torch.export (`strict=False`, dynamic batch and sequence dims) takes over. `trace` is the median "
             f"of {ROUNDS} runs of the whole call; its parts are timed once each: torch.fx's failed attempt, "
             "`torch.export.export`, the normalisation of the aten graph into torch-level calls, and `lift_graph` "
             "(shapes, channel rules, units). Coverage is where the channel rules stand at this commit.", "",
             "| family | size | parameters | aten nodes | nodes | groups | coverage | trace (s) | fx attempt (s) | "
             "export (s) | normalise (s) | lift (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['size']} | {r['params'] / 1e6:.2f} M | {r['aten nodes']} | {r['nodes']} | "
                     f"{r['groups']} | {r['coverage']:.3f} | {r['trace']:.2f} | {r['fx']:.2f} | {r['export']:.2f} | "
                     f"{r['normalise']:.3f} | {r['lift']:.2f} |")
    return "\n".join(lines)


def main() -> str:
    print("trace_time", flush=True)
    rows = []
    for size in SIZES:
        for family, build in families().items():
            rows.append(measure(family, build, size))
            print(f"  {family} ({size.name}): {rows[-1]['trace']:.2f}s", flush=True)
    text = section(rows) + f"\n\nCommand: `python -m bench trace_time`. Machine: {machine()}."
    write_section("trace_time", text)
    return text
