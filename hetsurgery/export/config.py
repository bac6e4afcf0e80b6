"""The YAML file of ``hetsurgery merge``: a strict pydantic schema and the builders of its models and data.

Every section forbids unknown keys, so a typo is an error that names it. Relative file names are read
from the config file's folder.

>>> cfg = MergeConfig.model_validate({"models": [{"factory": "mlp"}, {"factory": "mlp"}], "input_shape": [64]})
>>> cfg.width.method, cfg.calibration.dataset
('zip', 'digits')
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import sys
import typing
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import nn
from torch.utils.data import Subset

from hetsurgery.export.checkpoint import load_weights
from hetsurgery.export.errors import InputError
from hetsurgery.zoo import resolve
from hetsurgery.zoo.data import digits, loader


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One input model: ``factory(**kwargs)``, then the weights of ``weights`` (``.safetensors`` or ``.pt``)."""

    factory: str = Field(description='"package.module:function", or a zoo name such as resnet20')
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = Field(default=None, description="a .safetensors file or a torch state_dict (.pt)")
    name: str | None = None


class DataSpec(_Strict):
    """Batches of examples: the embedded 8x8 digits, or ``loader(**kwargs)`` from your own code."""

    dataset: Literal["digits"] | None = "digits"
    loader: str | None = Field(default=None, description='"package.module:function" returning an iterable of batches')
    kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: PositiveInt = 128
    every: PositiveInt = Field(default=2, description="digits: keep every n-th image")
    max_batches: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.loader is not None and self.dataset is not None and "dataset" in self.model_fields_set:
            raise ValueError("give either dataset or loader, not both")
        if self.loader is None and self.dataset is None:
            raise ValueError("give dataset: digits or loader: 'package.module:function'")
        return self


class EvaluationSpec(DataSpec):
    """Labelled test batches; ``tasks`` (lists of classes) add per-task accuracy, as in the demo."""

    tasks: list[list[int]] | None = None


class WidthSpec(_Strict):
    """Width alignment: ``method`` (average, permute, weight, ot, zip, mal, mal-pad) and its options."""

    method: str = "zip"
    options: dict[str, Any] = Field(default_factory=dict)
    target: Literal["max", "min"] | NonNegativeInt | dict[int, PositiveInt] | None = Field(
        default=None, description="merged widths: max, min, a model index, or {group: width}")


class DepthSpec(_Strict):
    """Depth alignment (models of different depth): ``cla``, ``sma`` or ``lma``, balanced by ``add`` or ``merge``."""

    method: Literal["cla", "sma", "lma"]
    balance: Literal["add", "merge"] = "add"
    options: dict[str, Any] = Field(default_factory=dict)


class MergeConfig(_Strict):
    """Everything ``hetsurgery merge`` needs; see ``README.md`` for an example file."""

    models: list[ModelSpec] = Field(min_length=2)
    input_shape: tuple[PositiveInt, ...] = Field(description="one example's shape, without the batch dimension")
    calibration: DataSpec = Field(default_factory=DataSpec)
    width: WidthSpec = Field(default_factory=WidthSpec)
    depth: DepthSpec | None = None
    merge_weights: list[NonNegativeFloat] | None = None
    anchor: NonNegativeInt = 0
    reset_bn: bool | PositiveInt = Field(
        default=True, description="recompute BatchNorm statistics: true (512 samples), a number of samples, or false")
    evaluate: EvaluationSpec | None = None
    seed: int = 0
    device: str = "auto"  # "auto": a CUDA GPU when one is present, else the CPU
    name: str = "merged"

    @field_validator("reset_bn", mode="before")
    @classmethod
    def _samples(cls, value: object) -> object:
        if isinstance(value, bool) or (isinstance(value, int) and value > 0):
            return value
        raise ValueError(f"give true, false or a positive number of samples, not {value!r}")

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        n = len(self.models)
        if self.merge_weights is not None and (len(self.merge_weights) != n or sum(self.merge_weights) <= 0):
            raise ValueError(f"merge_weights needs {n} non-negative numbers with a positive sum")
        if self.anchor >= n:
            raise ValueError(f"anchor {self.anchor} is not one of the {n} models")
        target = self.width.target
        if isinstance(target, int) and not isinstance(target, bool) and target >= n:
            raise ValueError(f"width.target {target} is not one of the {n} models (0 to {n - 1}); "
                             "give a model index, max, min or {group: width}")
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a torch device: {exc}") from exc
        return self


def load_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Parse and validate a YAML config; ``InputError`` lists every problem by its key path."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a mapping (models:, input_shape:, ...), not {type(raw).__name__}")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(err) for err in exc.errors())
        raise InputError(f"{path} has {exc.error_count()} problem(s):\n  {problems}") from exc


def _describe(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:  # a check across sections; its message names the keys
        return message
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        section = _section(err["loc"][:-1])
        known = f"; the keys here are {', '.join(section.model_fields)}" if section is not None else ""
        return f"{where}: unknown key (a typo?){known}"
    return f"{where}: {message}"


def _section(loc: Sequence[object]) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = MergeConfig
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(str(part))
        cls = _model_in(field.annotation) if field is not None else None
    return cls


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None), None)


# -- builders -------------------------------------------------------------------------------------------------

def build_models(cfg: MergeConfig, base: Path) -> list[nn.Module]:
    """The input models, built by their factories, with their weights, on ``cfg.device``, checked on ``input_shape``."""
    device = device_of(cfg)
    models = []
    for k, spec in enumerate(cfg.models):
        where = f"models.{k} ({spec.name or spec.factory})"
        try:
            with importable_from(base):
                factory = resolve(spec.factory)
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from exc
        torch.manual_seed(cfg.seed + k)
        try:
            model = factory(**spec.kwargs)
        except Exception as exc:  # the user's factory: any error means bad arguments
            raise InputError(f"{where}: {spec.factory}(**{spec.kwargs}) failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise InputError(f"{where}: the factory returned a {type(model).__name__}, not an nn.Module")
        if spec.weights is not None:
            load_weights(model, _relative(spec.weights, base), name=where)
        models.append(model.to(device).eval())
        check_input_shape(model, cfg.input_shape, device, where)
    return models


def check_input_shape(model: nn.Module, shape: Sequence[int], device: torch.device, where: str) -> None:
    """Run ``model`` on zeros of ``(2, *shape)``; ``InputError`` when it cannot take them."""
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape, device=device))
    except Exception as exc:  # shape errors surface as RuntimeError, ValueError, IndexError, ...
        raise InputError(f"{where} does not run on inputs of shape {(2, *shape)}: {type(exc).__name__}: {exc}. "
                         "input_shape is one example's shape without the batch dimension, e.g. [1, 8, 8] or "
                         "[3, 32, 32].") from exc


def build_data(spec: DataSpec, cfg: MergeConfig, base: Path, split: str = "train") -> list[Any]:
    """The batches of ``spec`` (a list: merging reads them more than once), on ``cfg.device``, shapes checked."""
    if spec.loader is not None:
        made = _call(spec.loader, spec.kwargs, base)
        if not isinstance(made, Iterable):
            raise InputError(f"loader {spec.loader!r} returned a {type(made).__name__}, not an iterable of batches")
        batches: Iterable[Any] = made
    else:
        dataset = digits(split)
        if split == "train":
            dataset = Subset(dataset, range(0, len(dataset), spec.every))  # type: ignore[assignment]
        batches = loader(dataset, spec.batch_size)
    out = [_to(b, device_of(cfg)) for b in itertools.islice(batches, spec.max_batches)]
    if not out:
        raise InputError(f"the {'calibration' if split == 'train' else 'evaluation'} data gave no batches")
    first = out[0][0] if isinstance(out[0], (tuple, list)) else out[0]
    if not isinstance(first, torch.Tensor) or tuple(first.shape[1:]) != tuple(cfg.input_shape):
        got = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else type(first).__name__
        raise InputError(f"the {'calibration' if split == 'train' else 'evaluation'} examples have shape {got}, "
                         f"but input_shape is {tuple(cfg.input_shape)}")
    return out


def device_of(cfg: MergeConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {cfg.device!r}: CUDA is not available here; use device: cpu")
    return device


def _relative(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _call(spec: str, kwargs: dict[str, Any], base: Path) -> object:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise InputError(f"{spec!r} must look like 'package.module:function'")
    try:
        with importable_from(base):
            function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load {spec!r}: {exc}") from exc
    if not callable(function):
        raise InputError(f"{spec!r} is not callable")
    try:
        return function(**kwargs)
    except Exception as exc:  # the user's loader
        raise InputError(f"{spec}(**{kwargs}) failed: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def importable_from(folder: Path) -> Iterator[None]:
    """Let ``factory:`` and ``loader:`` name modules that sit next to the config file while it is read."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


