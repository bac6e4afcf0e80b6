"""One step of the scale benchmark in a fresh process: ``python -m bench.scale_job KIND ROOT`` (``bench.scale`` runs
each under ``/usr/bin/time -v``).

Kinds: ``make`` (the checkpoints: A, a random Llama of about 1B parameters in bfloat16; B, A with every permutable
group permuted at random, heads as whole heads; C, A narrowed to 4096 MLP channels per layer, a random subset in a
random order), ``expand``, ``average``, ``permute``, ``malpad`` (the streamed runs measured), ``check`` (each
output loaded with ``from_pretrained`` and run on a sample against what it must compute).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

CONFIG = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
          "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
          "tie_word_embeddings": False}
NARROW = 4096
SHARD = "500MB"
EXPAND_AT = (4, 9, 14, 19)  # LLaMA Pro: one new block after every few
SAMPLES, LENGTH, BATCH = 8, 64, 4


def calibration() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, CONFIG["vocab_size"], (BATCH, LENGTH), generator=gen),
             "attention_mask": torch.ones(BATCH, LENGTH, dtype=torch.long)} for _ in range(SAMPLES // BATCH)]


def make(root: Path) -> dict[str, object]:
    import transformers

    from hetsurgery.ir import SlotMaps, slots_by_param
    from hetsurgery.passes import random_permutations
    from hetsurgery.stream import StreamedModel
    from hetsurgery.stream.writer import Layout

    config = transformers.LlamaConfig(**CONFIG)
    torch.manual_seed(0)
    a = transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    a.save_pretrained(root / "A", max_shard_size=SHARD)
    params = sum(p.numel() for p in a.parameters())
    sd = a.state_dict()
    m = StreamedModel.open(root / "A", calibration()[0], small=False)
    perms = random_permutations(m.graph, 1)
    maps = SlotMaps({g: (p, 1.0) for g, p in perms.items()}, {g: (p, 1.0) for g, p in perms.items()})
    by_param = slots_by_param(m.graph.groups)
    specs = [(k, t.dtype, tuple(t.shape)) for k, t in sd.items()]
    (root / "B").mkdir(exist_ok=True)
    config.save_pretrained(root / "B")
    Layout.of(specs, shard_bytes=500 * 10**6).write(root / "B", lambda k: maps.transform(sd[k], by_param.get(k, ())))
    gen = torch.Generator().manual_seed(2)
    keep = {i: torch.randperm(CONFIG["intermediate_size"], generator=gen)[:NARROW] for i in range(22)}

    def narrowed(k: str) -> torch.Tensor:
        t = sd[k]
        if ".mlp." not in k:
            return t
        i = int(k.split(".")[2])
        return t[:, keep[i]].contiguous() if "down_proj" in k else t[keep[i]].contiguous()

    narrow = transformers.LlamaConfig(**{**CONFIG, "intermediate_size": NARROW}, architectures=["LlamaForCausalLM"],
                                      dtype=torch.bfloat16)  # as save_pretrained of the model writes it
    (root / "C").mkdir(exist_ok=True)
    narrow.save_pretrained(root / "C")
    c_specs = [(k, t.dtype, tuple(narrowed(k).shape) if ".mlp." in k else tuple(t.shape)) for k, t in sd.items()]
    Layout.of(c_specs, shard_bytes=500 * 10**6).write(root / "C", narrowed)
    torch.save(keep, root / "C-keep.pt")
    return {"parameters": params, "bytes": {n: sum(f.stat().st_size for f in (root / n).glob("*.safetensors"))
                                            for n in "ABC"}}


def run(kind: str, root: Path) -> dict[str, object]:
    from hetsurgery import stream
    from hetsurgery.passes import InsertZeroResidual

    clock = time.perf_counter()
    if kind == "expand":
        r = stream.apply(root / "A", [InsertZeroResidual("stage0", EXPAND_AT)], root / "out-expand", progress=False)
    elif kind == "average":
        r = stream.merge([root / "A", root / "B"], None, root / "out-average", method="average", progress=False)
    elif kind == "permute":
        r = stream.merge([root / "A", root / "B"], calibration(), root / "out-permute", method="permute",
                         progress=False, device="cuda" if torch.cuda.is_available() else None)
    elif kind == "malpad":
        r = stream.merge([root / "A", root / "C"], None, root / "out-malpad", method="mal-pad", progress=False)
    else:
        raise SystemExit(f"unknown kind {kind}")
    return {"seconds": time.perf_counter() - clock, "stages": {k: v for k, v in r.seconds.items() if v}}


def check(root: Path) -> dict[str, object]:
    """Each output against what it must compute, on a sample of 2 sequences of 16 tokens (logits in float32)."""
    import transformers

    gen = torch.Generator().manual_seed(5)
    x = {"input_ids": torch.randint(0, CONFIG["vocab_size"], (2, 16), generator=gen)}
    load = transformers.LlamaForCausalLM.from_pretrained
    out: dict[str, object] = {}
    a = load(root / "A", dtype=torch.float32).eval()
    with torch.no_grad():
        want = a(**x).logits
        out["expand"] = _compare(load(root / "out-expand", dtype=torch.float32), x, want)
        out["permute"] = _compare(load(root / "out-permute", dtype=torch.float32), x, want)
        keep = torch.load(root / "C-keep.pt")
        ref = a.state_dict()
        for i, kept in keep.items():  # the channels only A has are halved (C's zero padding averaged in)
            alone = torch.ones(CONFIG["intermediate_size"], dtype=torch.bool)
            alone[kept] = False
            for name in ("gate_proj", "up_proj"):
                ref[f"model.layers.{i}.mlp.{name}.weight"][alone] *= 0.5
            ref[f"model.layers.{i}.mlp.down_proj.weight"][:, alone] *= 0.5
        a.load_state_dict(ref)
        out["malpad"] = _compare(load(root / "out-malpad", dtype=torch.float32), x, a(**x).logits)
        mk = root / "out-mergekit"
        if mk.exists():
            ours, theirs = load(root / "out-average").state_dict(), load(mk).state_dict()
            out["average_vs_mergekit"] = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    return out


def _compare(model: torch.nn.Module, x: dict[str, torch.Tensor], want: torch.Tensor) -> dict[str, object]:
    got = model.eval()(**x).logits
    return {"layers": model.config.num_hidden_layers, "max_abs_error": float((got - want).abs().max()),
            "intermediate": model.config.intermediate_size}


def main() -> None:
    kind, root = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(2)
    result = make(root) if kind == "make" else check(root) if kind == "check" else run(kind, root)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
