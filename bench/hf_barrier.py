"""Loss barriers of Hugging Face transformers merged at their midpoint (Xu et al.'s Table IV on digits).

Scikit-learn's 8x8 digits as token sequences: each 2x2 patch's mean grey level (0-16, rounded) is a token, 16
tokens in reading order (short sequences: the benchmark trains 18 models on two shared CPU cores) and a class token (first for BERT, last for Llama, whose classifier reads the last token). Two models of
one family, both trained on all ten classes from different seeds, are merged without training; the barrier is
``L(merged) − ½ (L(A) + L(B))`` on the test set (``hetsurgery.evaluate.loss_barrier``). Families, from Hugging
Face configs (random init, nothing downloaded):

* BERT-style post-LN encoder (``BertForSequenceClassification``): a post-norm block's stream is its LayerNorm's
  output, so no zero-residual block keeps the function. Two balancings of the shallow model, both approximate,
  each with its error (the change of the shallow model's test loss and the relative change of its logits):
  *repeating* its layers (Xu et al.: each of its ``n`` layers applied ``N / n`` times in a row,
  ``repeat_layers``), and ``merge``'s own ``depth=`` with post-norm blocks (``InsertPostNormBlock``: a copy of the
  block before with its branches zero, its first norm the identity affine, which computes nearly its input).
* Llama-style (``LlamaForSequenceClassification``: RMSNorm, rotary embeddings, grouped-query attention with 2
  key/value heads for 4 query heads): pre-norm, balanced by zero-residual blocks (``depth="lma"``), exact.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import hetsurgery as hs
from bench.report import machine, write_section
from hetsurgery.evaluate import loss_barrier, mean_loss, predictions
from hetsurgery.passes import replay
from hetsurgery.zoo.data import SPLIT_SEED

CLS, VOCAB = 17, 18
DEEP, SHALLOW = 4, 2


def _config(family: str, layers: int) -> object:
    import transformers as t

    if family == "bert":
        return t.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=24, num_labels=10,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return t.LlamaConfig(vocab_size=VOCAB + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24, num_labels=10,
                         pad_token_id=VOCAB)  # a padding id no sequence holds: the classifier reads the last token


def model_of(family: str, layers: int) -> nn.Module:
    import transformers as t

    kind = t.BertForSequenceClassification if family == "bert" else t.LlamaForSequenceClassification
    return kind(_config(family, layers))


def digit_tokens(split: str, family: str) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The digits split of ``zoo.data.digits`` as (inputs, labels) batches of 128: 16 patch tokens and a class token."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    xs, ys = (xtr, ytr) if split == "train" else (xte, yte)
    pooled = torch.tensor(xs, dtype=torch.float32).reshape(-1, 4, 2, 4, 2).mean((2, 4))  # 4x4 of 2x2 means
    ids = pooled.round().long().reshape(-1, 16)
    cls = torch.full((len(ids), 1), CLS, dtype=torch.long)
    ids = torch.cat([cls, ids] if family == "bert" else [ids, cls], 1)
    labels = torch.tensor(ys, dtype=torch.long)
    return [({"input_ids": ids[i:i + 128], "attention_mask": torch.ones_like(ids[i:i + 128])}, labels[i:i + 128])
            for i in range(0, len(ids), 128)]


def train_hf(model: nn.Module, data: list, *, epochs: int, seed: int, lr: float = 2e-3) -> nn.Module:
    """Adam with a one-cycle schedule on mini-batches of 64 drawn from ``data`` (seeded)."""
    torch.manual_seed(seed)
    ids = torch.cat([b[0]["input_ids"] for b in data])
    labels = torch.cat([b[1] for b in data])
    steps = (len(ids) + 63) // 64
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=gen)
        for i in range(steps):
            pick = order[64 * i:64 * (i + 1)]
            opt.zero_grad(set_to_none=True)
            out = model(input_ids=ids[pick], attention_mask=torch.ones_like(ids[pick]))
            F.cross_entropy(out.logits, labels[pick]).backward()
            opt.step()
            sched.step()
    return model.eval()


def repeat_layers(shallow: nn.Module, family: str, layers: int) -> nn.Module:
    """The shallow model as deep as ``layers`` by repeating each of its layers in place (layer ``i`` of the result
    is layer ``i * n // layers`` of the shallow model's ``n``): Xu et al.'s balancing of post-LN models, not exact."""
    deep = model_of(family, layers).eval()
    own = shallow.state_dict()
    n = shallow.config.num_hidden_layers
    stack = "bert.encoder.layer." if family == "bert" else "model.layers."
    state = {}
    for name in deep.state_dict():
        if name.startswith(stack):
            i, rest = name[len(stack):].split(".", 1)
            state[name] = own[f"{stack}{int(i) * n // layers}.{rest}"].clone()
        else:
            state[name] = own[name].clone()
    deep.load_state_dict(state)
    return deep


def _logits(model: nn.Module, data: list) -> torch.Tensor:
    return predictions(model, data)[0]


def run_family(family: str, seeds: Sequence[int], epochs: int) -> dict[str, list[float]]:
    train, test = digit_tokens("train", family), digit_tokens("test", family)
    calib = [b[0] for b in train[::2]]  # half the training batches, without labels
    out: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for seed in seeds:
        trained: dict[str, nn.Module] = {}
        for tag, layers, s in (("A", DEEP, 1000 * seed), ("B", DEEP, 1000 * seed + 1), ("b", SHALLOW, 1000 * seed + 1)):
            torch.manual_seed(s)
            trained[tag] = train_hf(model_of(family, layers), train, epochs=epochs, seed=s)
        a, b, small = trained["A"], trained["B"], trained["b"]
        for tag, m in trained.items():
            put(f"loss {tag}", mean_loss(m, test))
            put(f"acc {tag}", _accuracy(m, test))
        merges: dict[str, tuple[nn.Module, list[nn.Module]]] = {}
        for method in ("average", "permute", "zip"):
            merges[f"homogeneous {method}"] = (hs.merge([a, b], calib, method=method, progress=False).model, [a, b])
        if family == "bert":
            balanced = repeat_layers(small, family, DEEP)
            _balancing_error(put, "repeat", balanced, small, test)
            for method in ("average", "zip"):
                merged = hs.merge([a, balanced], calib, method=method, progress=False).model
                merges[f"heterogeneous repeat + {method}"] = (merged, [a, small])
            merges["heterogeneous post-norm blocks + average"] = (
                hs.merge([a, small], calib, method="average", depth="lma", progress=False).model, [a, small])
            for depth in ("lma", "cla"):
                r = hs.merge([a, small], calib, method="zip", depth=depth, progress=False)
                merges[f"heterogeneous post-norm blocks, {depth.upper()} zip"] = (r.model, [a, small])
                if depth == "lma":
                    x = calib[0]
                    inserted = replay(hs.trace(small, x), r.depth.model(1).passes) if r.depth else None
                    assert inserted is not None
                    _balancing_error(put, "post-norm blocks (LMA)", hs.to_module(inserted).eval(), small, test)
        else:
            merges["heterogeneous zero-residual + average"] = (
                hs.merge([a, small], calib, method="average", depth="lma", progress=False).model, [a, small])
            for depth in ("lma", "cla"):
                merged = hs.merge([a, small], calib, method="zip", depth=depth, progress=False).model
                merges[f"heterogeneous {depth.upper()} zip"] = (merged, [a, small])
        for name, (merged, ends) in merges.items():
            put(f"barrier {name}", loss_barrier(merged, ends, test))
            put(f"acc {name}", _accuracy(merged, test))
        print(f"  {family} seed {seed}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in out.items()), flush=True)
    return out


def _balancing_error(put: Callable[[str, float], None], how: str, balanced: nn.Module, small: nn.Module,
                     test: list) -> None:
    put(f"balancing loss change {how}", mean_loss(balanced, test) - mean_loss(small, test))
    ref = _logits(small, test)
    put(f"balancing logit error {how}", float((_logits(balanced, test) - ref).norm() / ref.norm()))


def _accuracy(model: nn.Module, data: list) -> float:
    logits, labels = predictions(model, data)
    return (logits.argmax(1) == labels).float().mean().item()


def _fmt(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def _table(family: str, r: dict[str, list[float]]) -> list[str]:
    homo = statistics.mean(r["barrier homogeneous zip"])
    lines = ["| model or merge | test loss barrier (λ = 0.5) | test accuracy (%) |", "|---|---|---|"]
    for tag, what in (("A", f"model A ({DEEP} layers)"), ("B", f"model B ({DEEP} layers, for homogeneous merges)"),
                      ("b", f"model B' ({SHALLOW} layers, for heterogeneous merges)")):
        lines.append(f"| {what}: test loss {_fmt(r[f'loss {tag}'])} | | {_fmt(r[f'acc {tag}'], 100, 1)} |")
    for key in r:
        if key.startswith("barrier "):
            name = key[len("barrier "):]
            lines.append(f"| {name} | {_fmt(r[key])} | {_fmt(r[f'acc {name}'], 100, 1)} |")
    hetero, best = min((statistics.mean(v), k[len("barrier "):]) for k, v in r.items()
                       if k.startswith("barrier heterogeneous") and "average" not in k)
    vanilla = statistics.mean(r["barrier homogeneous average"])
    lines += ["", f"{family}: aligned (homogeneous zip {homo:.3f}) < vanilla averaging ({vanilla:.3f}): "
              f"{'holds' if homo < vanilla else 'does not hold'}; best heterogeneous ({best}) {hetero:.3f} at most 10 % "
              f"above homogeneous: {'holds' if hetero <= homo + 0.1 * abs(homo) else 'does not hold'} "
              f"({100 * (hetero - homo) / abs(homo):+.0f} %)."]
    for key in (k for k in r if k.startswith("balancing loss change ")):
        how = key[len("balancing loss change "):]
        lines.append(f"Balancing error, {how} (model B' balanced against B' itself): test loss change "
                     f"{_fmt(r[key])}, relative logit change {_fmt(r[f'balancing logit error {how}'])}.")
    return lines


def main(seeds: Sequence[int] | None = None, epochs: int = 12) -> str:
    seeds = seeds or tuple(int(s) for s in os.environ.get("HF_BARRIER_SEEDS", "0,1,2").split(","))
    parts = ["## Loss barriers of Hugging Face transformers (Xu et al.'s Table IV)", "",
             "Scikit-learn's 8x8 digits as token sequences (each 2x2 patch's mean grey level, 0-16, a token: 16 "
             "tokens and a class token), all ten classes; model A and model B from different seeds (Adam, "
             f"{epochs} epochs), width 32, 4 heads, MLP 64; A has {DEEP} layers, B {DEEP} (homogeneous) or "
             f"{SHALLOW} (B', heterogeneous). Calibration: half the training set, no labels. Barrier: test loss "
             "of the merged model minus the mean of the two merged models' test losses "
             "(`hetsurgery.evaluate.loss_barrier`); lower is better. Mean ± std over seeds "
             f"{', '.join(map(str, seeds))}. Merges use `merge`'s defaults (zip: heads matched on their outputs, "
             "values zipped inside heads, LayerNorm'd streams zipped by principal directions, REPAIR).", ""]
    for family, title in (("bert", "BERT-style post-LN encoder (`BertForSequenceClassification`); heterogeneous: "
                                   "B' balanced by repeating its layers (`repeat_layers`) or by post-norm blocks "
                                   "(`depth=`, `InsertPostNormBlock`), both approximate"),
                          ("llama", "Llama-style (`LlamaForSequenceClassification`: RMSNorm, rotary, 4 query / 2 "
                                    "key-value heads); heterogeneous: zero-residual blocks (`depth=`, exact)")):
        print(f"hf_barrier: {family}", flush=True)
        r = run_family(family, seeds, epochs)
        parts += [f"### {title}", "", *_table(family, r), ""]
    parts.append(f"Command: `python -m bench hf_barrier`. Machine: {machine()}.")
    text = "\n".join(parts)
    write_section("hf_barrier", text)
    return text
