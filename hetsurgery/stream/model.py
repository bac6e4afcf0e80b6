"""A model whose structure is in memory and whose tensors stay in its checkpoint.

``StreamedModel.open`` builds the model class named in the checkpoint's ``config.json`` with its parameters on the
``meta`` device (the buffers the class computes itself, a rotary table, are real: the checkpoint does not hold
them), traces it into a ``ModelGraph`` (structure only) and maps every parameter of the graph to the checkpoint's
tensor of that name (tied weights under any of their names). The one-dimensional tensors (norms, biases) are read
into the graph: they are small, and matching reads them as each channel's signature. ``values`` reads the others
one at a time, in float32 unless asked otherwise (``Values``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from hetsurgery.export.errors import InputError
from hetsurgery.ir import ModelGraph
from hetsurgery.merging.inputs import all_finite
from hetsurgery.stream.checkpoint import Checkpoint
from hetsurgery.tracing import trace

DEFAULT_EXAMPLE_LENGTH = 8


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Models built in the body get their parameters on the ``meta`` device (no memory, no initialisation) and
    their buffers where they are made (``nn.Module.register_parameter`` wrapped while the body runs)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_like(ckpt: Checkpoint, like_class: type[nn.Module] | None = None) -> nn.Module:
    """The checkpoint's model class built from its config, parameters on meta, in eval mode: the class its
    ``architectures`` names, else ``like_class`` (the class of the model it is merged with) when that class takes
    this config, else the bare model (``AutoModel``)."""
    if ckpt.config is None:
        raise InputError(f"{ckpt.folder} has no config.json: a checkpoint is traced from the model its config "
                         "describes; save the model with save_pretrained")
    try:
        import transformers
    except ImportError as exc:
        raise InputError("reading a Hugging Face checkpoint needs transformers: pip install 'hetsurgery[hf]'") from exc
    config = transformers.AutoConfig.from_pretrained(ckpt.folder)
    names = list(getattr(config, "architectures", None) or [])
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None and like_class is not None and isinstance(config, getattr(like_class, "config_class", ())):
        cls = like_class  # a config saved on its own (config.save_pretrained) names no architecture
    with parameters_on_meta():
        model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    return model.eval()


def default_example(like: nn.Module) -> dict[str, torch.Tensor]:
    """Token ids to trace a language model on when no calibration batch is given."""
    if getattr(getattr(like, "config", None), "vocab_size", None) is None:
        raise InputError(f"{type(like).__name__} takes no token ids: give example_inputs= to trace it")
    return {"input_ids": torch.zeros(2, DEFAULT_EXAMPLE_LENGTH, dtype=torch.long)}


@dataclass(frozen=True)
class StreamedModel:
    """The ``checkpoint``, the model class built on meta (``like``: what ``to_pretrained`` fills), its ``graph`` and
    which checkpoint tensor holds each graph parameter (``keys``; the rest are ``held`` by the graph)."""

    checkpoint: Checkpoint
    like: nn.Module
    graph: ModelGraph
    keys: Mapping[str, str]

    @staticmethod
    def open(path: str | os.PathLike[str] | Checkpoint, example: Any = None, *, name: str | None = None,
             like_model: StreamedModel | None = None, small: bool = True) -> StreamedModel:
        """Trace the checkpoint's model on ``example`` (token ids by default); ``like_model``, a model of the same
        config traced on the same example, lends its structure instead (tracing once for models of one
        architecture). ``small``: read the one-dimensional tensors into the graph (matching reads them); without,
        every parameter stays on meta, and passes that trace the graph again (structural ones) can run on it."""
        ckpt = path if isinstance(path, Checkpoint) else Checkpoint.open(path)
        name = name or ckpt.folder.name
        if like_model is not None and structure_config(like_model.checkpoint) == structure_config(ckpt):
            like, g = like_model.like, replace(like_model.graph, name=name)
        else:
            like = build_like(ckpt, type(like_model.like) if like_model is not None else None)
            g = trace(like, example if example is not None else default_example(like), name=name)
        keys = _keys(ckpt, like, g)
        if not small:
            return StreamedModel(ckpt, like, g, keys)
        held = {p: ckpt.read(k, dtype=_float(g.params[p].dtype)) for p, k in keys.items()
                if g.params[p].dim() <= 1 and g.params[p].is_floating_point()}
        return StreamedModel(ckpt, like, g.with_updates(held), keys)

    @property
    def name(self) -> str:
        return self.graph.name

    def dtype(self, param: str) -> torch.dtype:
        """The dtype ``param`` is stored in (the graph's own for a tensor the checkpoint does not hold)."""
        key = self.keys.get(param)
        return self.checkpoint.dtype(key) if key is not None else self.graph.params[param].dtype

    def values(self, dtype: torch.dtype | None = torch.float32, device: torch.device | str | None = None) -> Values:
        """The parameter values, read when asked for, floating ones in ``dtype`` (``None``: as stored)."""
        return Values(self, dtype, device)


class Values(Mapping[str, torch.Tensor]):
    """A streamed model's parameter values by graph name (lazy: ``ir.lazy``), each read from the checkpoint when
    asked for, whole or a block of rows (floating
    tensors in ``dtype``, or as stored for ``None``, on ``device``) and checked to be finite (once read whole, a tensor
    is not checked again: weight matching reads each several times); no tensor is kept."""

    def __init__(self, model: StreamedModel, dtype: torch.dtype | None, device: torch.device | str | None) -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self.finite: set[str] = set()  # checked already

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.rows(name, None)

    def rows(self, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
        """Rows ``start:stop`` of ``name`` (all of it for ``None``)."""
        g = self.model.graph
        if name not in g.params:
            raise KeyError(name)
        key = self.model.keys.get(name)
        if key is None or (g.params[name].dim() <= 1 and not g.params[name].is_meta):
            t = g.params[name] if rows is None else g.params[name][rows[0]:rows[1]]
            return t.to(dtype=self._dtype(t), device=self.device)
        ckpt = self.model.checkpoint
        t = ckpt.read(key, dtype=self._dtype_of(ckpt.dtype(key)), device=self.device, rows=rows)
        if t.is_floating_point() and key not in self.finite:
            if not all_finite(t):
                raise InputError(f"{self.model.name}: {key} in {ckpt.entries[key].file} holds NaN or Inf; fix the "
                                 "checkpoint first")
            if rows is None:
                self.finite.add(key)
        return t

    def shape(self, name: str) -> torch.Size:
        """``name``'s shape, without reading it."""
        return self.model.graph.params[name].shape

    def _dtype(self, t: torch.Tensor) -> torch.dtype:
        return self._dtype_of(t.dtype)

    def _dtype_of(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self.model.graph.params

    def __iter__(self) -> Iterator[str]:
        return iter(self.model.graph.params)

    def __len__(self) -> int:
        return len(self.model.graph.params)


def structure_config(ckpt: Checkpoint) -> dict[str, Any]:
    """What decides a checkpoint's structure: its config without the dtype and where it came from."""
    return {k: v for k, v in (ckpt.config or {}).items() if k not in ("dtype", "torch_dtype", "_name_or_path")}


def _float(dtype: torch.dtype) -> torch.dtype | None:
    return dtype if dtype.is_floating_point else None


def _keys(ckpt: Checkpoint, like: nn.Module, g: ModelGraph) -> dict[str, str]:
    """Graph parameter -> the checkpoint tensor holding it (a tied tensor under any of its names); a buffer the
    class computes and does not save is left to the graph; anything else missing, or of another shape, is refused."""
    saved = like.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for saved_name, tensor in saved.items():
        aliases.setdefault(id(tensor), []).append(saved_name)
    by_name = {saved_name: aliases[id(tensor)] for saved_name, tensor in saved.items()}
    out = {}
    for p, t in g.params.items():
        key = next((k for k in by_name.get(p, [p]) if k in ckpt.entries), None)
        if key is None:
            if p not in saved and not t.is_meta:
                continue  # computed by the class (a rotary table): the graph holds it
            prefixed = f"{getattr(like, 'base_model_prefix', '')}.{p}"
            if prefixed in ckpt.entries:
                raise InputError(f"{ckpt.folder / 'config.json'} names no architecture, so it describes the bare "
                                 f"{type(like).__name__}, but the tensors are of a model with a head ({prefixed}): "
                                 "add \"architectures\": [its class, as \"LlamaForCausalLM\"] to the config")
            raise InputError(f"{ckpt.path} holds no tensor {p}, which {type(like).__name__} (from its config.json) "
                             "has; the config and the weights do not belong together")
        if ckpt.shape(key) != tuple(t.shape):
            raise InputError(f"{ckpt.entries[key].file}: {key} has shape {ckpt.shape(key)}, but the model its "
                             f"config.json describes has {tuple(t.shape)}; the config and the weights do not belong "
                             "together")
        out[p] = key
    return out
