"""Weights back into the user's own model class: a state dict under the original parameter names, and for
Hugging Face models the ``PreTrainedModel`` with its config updated to the new depth and widths.

A graph's parameters keep the names of the model it was traced from (``model.layers.3.mlp.up_proj.weight``),
whatever the front end; blocks inserted by ``InsertZeroResidual`` get the next free number of their container
(``model.layers.4``) wherever they sit. ``state_dict_like`` numbers every numbered container again in the order
its members run, so layer ``i`` of the result is the ``i``-th the data goes through, as a model class builds them.
``to_pretrained`` then builds ``type(like)`` from ``like``'s config with the number of layers and every size that
changed (a config field holding an old size takes the new one), checks that the built model's parameters have
exactly these names and shapes, and loads them.

>>> import torch, hetsurgery as hs
>>> from hetsurgery.passes import InsertZeroResidual
>>> net = hs.zoo.resnet((1, 1, 1), in_channels=1).eval()
>>> g = InsertZeroResidual("stage0", (0,))(hs.trace(net, torch.randn(2, 1, 8, 8)))
>>> sd = state_dict_like(g)   # the zero-residual block inserted first is layer1.0 now
>>> float(sd["layer1.0.bn2.weight"].abs().sum()), float(sd["layer1.1.bn2.weight"].abs().sum()) > 0
(0.0, True)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hetsurgery.errors import ExportError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.structure import owner_of

_NUMBERED = re.compile(r"^(.*?)\.(\d+)\.(.*)$")


def state_dict_like(g: ModelGraph) -> dict[str, torch.Tensor]:
    """``g``'s parameters and buffers under their original names, numbered containers renumbered in run order."""
    return {saved: g.params[name].detach() for name, saved in saved_names(g).items()}


def saved_names(g: ModelGraph) -> dict[str, str]:
    """Each parameter's name in ``state_dict_like`` (a streamed merge writes the tensors under them)."""
    order = _run_order(g)
    return {name: _renumbered(name, order) for name in g.params}


def to_pretrained(g: ModelGraph, like: nn.Module) -> nn.Module:
    """A new model of ``like``'s class holding ``g``'s weights (``like`` is not changed).

    For a Hugging Face model (a ``config`` attribute) the config is copied with ``num_hidden_layers`` and every
    size that changed; the result is built from it, in eval mode, so ``save_pretrained`` / ``from_pretrained``
    round-trip. Any other module must already have the right shapes: its copy gets the weights.
    """
    order = _run_order(g)
    weights = _as_saved_by(like, {k: t.clone() for k, t in state_dict_like(g).items()})  # the result owns them
    config = getattr(like, "config", None)
    if config is None:
        model = copy.deepcopy(like)
    else:
        config = _updated_config(config, weights, like, order)
        model = _built(like, config)
    _check_names(g, model, weights)
    model.load_state_dict(weights, strict=True, assign=config is not None)
    _unsaved_buffers(model, like)
    _tie_again(model)
    return model.eval()


def _unsaved_buffers(model: nn.Module, like: nn.Module) -> None:
    """Buffers the class makes itself and does not save (a rotary table) were built on the meta device: take
    ``like``'s (the config that computes them is the same)."""
    theirs = dict(like.named_buffers())
    by_pattern = {_NUMBERED.sub(r"\1.*.\3", n): b for n, b in theirs.items()}
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # a layer's own buffer, or (an inserted layer) that of another layer of its container
            mine = theirs.get(name, by_pattern.get(_NUMBERED.sub(r"\1.*.\3", name)))
            if mine is None or mine.shape != buf.shape:
                raise ExportError(f"{type(model).__name__}: buffer {name} is not saved with the weights and "
                                  f"{type(like).__name__} has none of its shape to take")
            module, leaf = owner_of(model, name)
            module.register_buffer(leaf, mine.detach().clone(), persistent=leaf not in module._non_persistent_buffers_set)


def _as_saved_by(like: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` as ``like.state_dict()`` names them: tied tensors under every name they have there (a graph
    keeps one), buffers ``like`` does not save (a rotary table's ``inv_freq``) left out."""
    saved = like.state_dict(keep_vars=True)
    unsaved = {n for n, _ in like.named_buffers()} - set(saved)
    out = {n: t for n, t in weights.items() if n not in unsaved}
    by_tensor: dict[int, list[str]] = {}
    for name, t in saved.items():
        by_tensor.setdefault(id(t), []).append(name)
    for names in by_tensor.values():
        have = next((n for n in names if n in out), None)
        if have is not None:
            out.update({n: out[have] for n in names if n not in out})
    return out


def _built(like: nn.Module, config: Any) -> nn.Module:
    """``like``'s class built from ``config`` on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return type(like)(config)


def _updated_config(config: Any, weights: Mapping[str, torch.Tensor], like: nn.Module,
                    order: Mapping[str, Mapping[int, int]]) -> Any:
    """``config`` with the number of layers, the per-layer settings and the sizes of ``weights``.

    Per-layer lists (Qwen2's ``layer_types``) follow the layers in run order, an inserted layer taking the
    setting of the layer before it (the one ``InsertZeroResidual`` copies; the first one when it comes first).
    A size field changes only when the class built with the change has more parameters of the right shape: a
    field that merely holds the same number (``max_position_embeddings`` equal to ``intermediate_size``) stays.
    """
    new = copy.deepcopy(config)
    container, old = _hidden_layers(like)
    if container is not None and hasattr(new, "num_hidden_layers"):
        sources = _layer_sources(order.get(container, {}), old)
        new.num_hidden_layers = len(sources)
        for key, value in new.to_dict().items():  # per-layer settings (Qwen2's layer_types): one per layer
            if isinstance(value, list) and len(value) == old and old and hasattr(new, key):
                setattr(new, key, [value[j] for j in sources])
    want = {n: tuple(t.shape) for n, t in weights.items()}
    ref = like.state_dict()
    sizes = {a: b for n, t in weights.items() if (o := ref.get(n)) is not None and o.dim() == t.dim()
             for a, b in zip(o.shape, t.shape, strict=True) if a != b}
    wrong = _mismatches(_built(like, new), want)
    for key in sorted(k for k, v in new.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)
                      and v in sizes and hasattr(new, k)):
        if not wrong:
            break
        trial = copy.deepcopy(new)
        setattr(trial, key, sizes[getattr(new, key)])
        fewer = _mismatches(_built(like, trial), want)
        if fewer < wrong:
            new, wrong = trial, fewer
    return new


def _mismatches(model: nn.Module, want: Mapping[str, tuple[int, ...]]) -> int:
    have = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    return sum(have.get(n) != s for n, s in want.items()) + sum(n not in want for n in have)


def _hidden_layers(like: nn.Module) -> tuple[str | None, int]:
    """The numbered container of ``like``'s hidden layers (``config.num_hidden_layers`` members) and its count."""
    n = getattr(getattr(like, "config", None), "num_hidden_layers", None)
    if n is None:
        return None, 0
    return next(((c, n) for c, members in _containers(like.state_dict()).items() if len(members) == n), (None, 0))


def _layer_sources(order: Mapping[int, int], old: int) -> list[int]:
    """For each layer in run order, the original layer it is or copies: itself, else the original before it
    (the first original for a layer that comes first)."""
    by_new = sorted(order.items(), key=lambda item: item[1])
    originals = [j for j, _ in by_new if j < old]
    out, last = [], None
    for j, _ in by_new:
        if j < old:
            last = j
        out.append(j if j < old else (last if last is not None else originals[0]))
    return out


def _containers(names: Mapping[str, Any] | Any) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for name in names:
        m = _NUMBERED.match(name)
        if m:
            out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return out


def _run_order(g: ModelGraph) -> dict[str, dict[int, int]]:
    """Per numbered container, old index -> new index, in the order the graph first uses each member."""
    seen: dict[str, list[int]] = {}
    for node in g.module.graph.nodes:
        if node.op not in ("call_module", "get_attr"):
            continue
        m = _NUMBERED.match(f"{node.target}.")  # the outermost numbered level decides
        if m:
            members = seen.setdefault(m.group(1), [])
            if int(m.group(2)) not in members:
                members.append(int(m.group(2)))
    for name in g.params:  # members the graph never reads directly (a buffer): after the others
        m = _NUMBERED.match(name)
        if m and int(m.group(2)) not in seen.setdefault(m.group(1), []):
            seen[m.group(1)].append(int(m.group(2)))
    return {c: {old: new for new, old in enumerate(members)} for c, members in seen.items()}


def _renumbered(name: str, order: Mapping[str, Mapping[int, int]]) -> str:
    m = _NUMBERED.match(name)
    if not m or m.group(1) not in order:
        return name
    return f"{m.group(1)}.{order[m.group(1)][int(m.group(2))]}.{m.group(3)}"


def _check_names(g: ModelGraph, model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    want = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    have = {n: tuple(t.shape) for n, t in weights.items()}
    problems = [f"{n} is missing" for n in sorted(set(want) - set(have))]
    problems += [f"{n} is not a parameter of {type(model).__name__}" for n in sorted(set(have) - set(want))]
    problems += [f"{n} has shape {have[n]}, the class builds {want[n]}" for n in sorted(set(want) & set(have))
                 if want[n] != have[n]]
    if problems:
        raise ExportError(f"{g.name}: its weights do not fit {type(model).__name__}: " + "; ".join(problems[:6])
                          + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
                          + ". Only a structure the model class can build (its layers, widths and heads) goes "
                            "back into it; save anything else as a package (hetsurgery.export.save)")


def _tie_again(model: nn.Module) -> None:
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
