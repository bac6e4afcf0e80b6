"""The YAML file of ``hetsurgery merge``: a strict pydantic schema, every key described.

Every section forbids unknown keys, so a typo is an error that names it. The descriptions and examples
are the documentation: ``hetsurgery merge --example-config`` prints them as a commented template.

>>> cfg = MergeConfig.model_validate({"models": [{"factory": "mlp"}, {"factory": "mlp"}], "input_shape": [64],
...                                   "calibration": {"dataset": "digits"}})
>>> cfg.width.method, cfg.calibration.dataset, cfg.calibration.every
('zip', 'digits', 2)

Without ``calibration:`` there is no data (``None``): only data-free methods run (``config.calibration``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One input model: ``factory(**kwargs)``, then the weights of ``weights`` (``.safetensors`` or ``.pt``)."""

    factory: str = Field(description='"package.module:function" (a module next to this file works too) or a zoo '
                                     "name: mlp, vgg, resnet20, resnet26, resnet32, resnet50, transformer, densenet, "
                                     "mobilenet")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    weights: Path | None = Field(default=None, description=(
        "a .safetensors file, or a state_dict saved with torch.save (.pt), relative to this file's folder; "
        "without it the factory's initialisation is used"), json_schema_extra={"accepts": "a file name"})
    name: str | None = Field(default=None, description="the model's name in messages and the report (default: "
                                                       "model 0, model 1, ...)")


class DataSpec(_Strict):
    """Batches of examples: the embedded 8x8 digits, or ``loader(**kwargs)`` from your own code."""

    dataset: Literal["digits"] | None = Field(default="digits", description=(
        "digits: scikit-learn's 8x8 digits (1 channel, input_shape [1, 8, 8]); leave it out when you give a loader"),
        json_schema_extra={"accepts": "digits (or leave it out and give a loader)"})
    loader: str | None = Field(default=None, examples=["mypkg.data:batches"], description=(
        '"package.module:function" returning a re-iterable of batches: tensors, (inputs, labels) pairs, or dicts '
        "(then give input_key and label_key)"), json_schema_extra={"accepts": '"package.module:function"'})
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the loader")
    input_key: str | None = Field(default=None, examples=["image"], description=(
        "for a loader whose batches are dicts: the key of the inputs"), json_schema_extra={"accepts": "a key"})
    label_key: str | None = Field(default=None, examples=["label"], description=(
        "for a loader whose batches are dicts: the key of the labels (the evaluation needs them)"),
        json_schema_extra={"accepts": "a key"})
    batch_size: PositiveInt = Field(default=128, description="digits: examples per batch")
    every: PositiveInt = Field(default=2, description="digits: keep every n-th image of the training split")
    max_batches: PositiveInt | None = Field(default=None, examples=[8], description=(
        "read at most this many batches (default: all)"), json_schema_extra={"accepts": "a positive whole number"})

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.loader is not None and self.dataset is not None and "dataset" in self.model_fields_set:
            raise ValueError("give either dataset or loader, not both")
        if self.loader is None and self.dataset is None:
            raise ValueError("give dataset: digits or loader: 'package.module:function'")
        if self.loader is None and (self.input_key or self.label_key):
            raise ValueError("input_key and label_key name the parts of a loader's dict batches; give a loader")
        return self


class EvaluationSpec(DataSpec):
    """Labelled test batches (the test split of the digits); ``tasks`` add per-task accuracy, as in the demo."""

    every: PositiveInt = Field(default=1, description="digits: keep every n-th image of the test split")
    tasks: list[list[NonNegativeInt]] | None = Field(default=None, examples=[[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]],
                                                     description="lists of classes: per-task accuracy for each",
                                                     json_schema_extra={"accepts": "lists of class numbers"})


class WidthSpec(_Strict):
    """Width alignment: ``method`` and its options, and the merged widths."""

    method: str = Field(default="zip", description="average, permute, weight, ot, zip, mal or mal-pad")
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"alpha": 0.5, "beta": 1.0}], description=(
        "the method's options: zip alpha, beta; ot solver, reg, cost; weight and mal max_sweeps, seed"))
    target: Literal["max", "min"] | NonNegativeInt | dict[int, PositiveInt] | None = Field(
        default=None, examples=["max"], description=(
            "merged widths of models of different widths: max, min, a model index, or {group: width}"),
        json_schema_extra={"accepts": "max, min, a model index or {group: width}"})


class DepthSpec(_Strict):
    """Depth alignment (models of different depth): ``cla``, ``sma`` or ``lma``, balanced by ``add`` or ``merge``."""

    method: Literal["cla", "sma", "lma"] = Field(examples=["lma"], description=(
        "how units are aligned: cla (CLAFusion, first and last fixed), sma (segment-wise) or lma (layer-wise)"))
    balance: Literal["add", "merge"] = Field(default="add", description=(
        "add identity layers / zero-residual blocks to the shallower models, or merge (fuse) Linear layers of "
        "the deeper ones"))
    cost: Literal["cka", "width"] = Field(default="cka", description=(
        "what cla compares: linear CKA on the calibration data, or the widths (data-free)"))
    estimator: Literal["sign_of_sum", "majority", "average_sign"] = Field(default="sign_of_sum", description=(
        "balance merge: how each fused ReLU's diagonal is estimated"))


CALIBRATION_EXAMPLE = {"dataset": "digits", "kwargs": {}, "batch_size": 128, "every": 2}
_MODELS_EXAMPLE = [
    {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [64, 64]}, "weights": "a.safetensors", "name": "A"},
    {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [128, 96]}, "weights": "b.pt", "name": "B"},
]


class MergeConfig(_Strict):
    """Everything ``hetsurgery merge`` needs; ``hetsurgery merge --example-config`` prints a template."""

    models: list[ModelSpec] = Field(min_length=2, examples=[_MODELS_EXAMPLE], description="the models to merge, "
                                    "two or more")
    input_shape: tuple[PositiveInt, ...] = Field(examples=[[1, 8, 8]], description=(
        "one example's shape, without the batch dimension"), json_schema_extra={"accepts": "a list of sizes"})
    calibration: DataSpec | None = Field(default=None, examples=[CALIBRATION_EXAMPLE], description=(
        "the data the merge measures activations on; required unless the method is data-free (average, weight, "
        "mal, mal-pad, ot with cost: weights) and no BatchNorm statistics are recomputed"),
        json_schema_extra={"template": "shown"})
    width: WidthSpec = Field(default_factory=WidthSpec, description="how the models' channels are aligned and merged")
    depth: DepthSpec | None = Field(default=None, description="depth alignment, for models of different depth")
    merge_weights: list[NonNegativeFloat] | None = Field(default=None, examples=[[0.5, 0.5]], description=(
        "one weight per model (default: equal)"), json_schema_extra={"accepts": "one number per model"})
    anchor: NonNegativeInt = Field(default=0, description="the model whose parameter names the merged model keeps")
    reset_bn: bool | PositiveInt = Field(default=True, description=(
        "recompute BatchNorm statistics: true (512 samples), a number of samples, or false"))
    evaluate: EvaluationSpec | None = Field(default=None, description=(
        "labelled data to score every input model and the merged one on (default: no scores)"))
    seed: int = Field(default=0, description="the seed of the factories' initialisation and of the merge")
    device: str = Field(default="auto", description="auto (a CUDA GPU when present, else the CPU), cpu, cuda:1, ...")
    name: str = Field(default="merged", description="the merged model's name")

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
