"""The YAML file of ``hetsurgery assemble``: a base, its donors (each with its units and λ), the alignment.

The same conventions as ``hetsurgery merge``'s schema (``hetsurgery.config.schema``): every section forbids
unknown keys, the descriptions and examples are the documentation (``hetsurgery assemble --example-config``
prints them as a commented template), and the model, data and evaluation sections are merge's own.

>>> cfg = AssemblyConfig.model_validate({"base": {"factory": "mlp"}, "donors": [{"factory": "mlp", "lam": 0.1}],
...                                      "input_shape": [64]})
>>> cfg.align.method, cfg.lam, cfg.donors[0].lam, cfg.donors[0].layers
('mal', 0.3, 0.1, None)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from hetsurgery.config.schema import CALIBRATION_EXAMPLE, DataSpec, EvaluationSpec, ModelSpec

Lambda = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(ModelSpec):
    """The base: a model as in ``merge`` (``factory``, ``kwargs``, ``weights``, ``name``)."""

    name: str | None = Field(default=None, description="the base's name in messages and the report (default: base)")


class DonorSpec(ModelSpec):
    """One donor: a model as in ``merge`` (``factory``, ``kwargs``, ``weights``, ``name``), and, for this donor
    only, the base's units it gives and their λ."""

    name: str | None = Field(default=None, description=(
        "the donor's name in messages and the report (default: donors.0, donors.1, ...)"))
    layers: Literal["all"] | list[str] | None = Field(default=None, examples=[["layers_0", "layers_2"]], description=(
        "the base's units this donor gives (unit keys, as hetsurgery inspect lists them), or all; default: the "
        "top-level layers"), json_schema_extra={"accepts": "all or a list of unit keys"})
    lam: Lambda | dict[str, Lambda] | None = Field(default=None, examples=[{"layers_0": 0.2}], description=(
        "λ for this donor: a number in [0, 1] or {unit key: λ}; default: the top-level lam"),
        json_schema_extra={"accepts": "a number in [0, 1] or {unit key: number in [0, 1]}"})


class AlignSpec(_Strict):
    """How a donor is carried into the base's channels."""

    method: str = Field(default="mal", description=(
        "mal (zero padding and alternating LAPs, no data), mal-pad (zero padding, one LAP per group), permute "
        "(equal widths), zip; or any merge method"))
    options: dict[str, Any] = Field(default_factory=dict, examples=[{"max_sweeps": 100}], description=(
        "the method's options: mal and weight max_sweeps, seed; zip alpha, beta; ot solver, reg, cost"))


class AssemblyDepthSpec(_Strict):
    """Depth alignment of donors whose depth differs from the base's (the base always keeps its own)."""

    method: Literal["cla", "sma", "lma"] = Field(examples=["lma"], description=(
        "how a donor's units meet the base's: cla (CLAFusion), sma (segment-wise) or lma (layer-wise), on CKA"))
    cost: Literal["cka", "width"] = Field(default="cka", description=(
        "what cla compares: linear CKA on the calibration data, or the widths (data-free)"))
    estimator: Literal["sign_of_sum", "majority", "average_sign"] = Field(default="sign_of_sum", description=(
        "a deeper donor's fused layers: how each fused ReLU's diagonal is estimated"))


_BASE_EXAMPLE = {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [64, 64]}, "weights": "base.safetensors",
                 "name": "base"}
_DONORS_EXAMPLE = [
    {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [128, 96]}, "weights": "wide.pt", "name": "wide",
     "layers": ["layers_0"], "lam": 0.2},
    {"factory": "hetsurgery.zoo:mlp", "kwargs": {"hidden": [48, 32]}, "weights": "narrow.safetensors",
     "name": "narrow"},
]


class AssemblyConfig(_Strict):
    """Everything ``hetsurgery assemble`` needs; ``hetsurgery assemble --example-config`` prints a template."""

    base: BaseSpec = Field(examples=[_BASE_EXAMPLE], description="the base model: it keeps its architecture, input "
                            "and output")
    donors: list[DonorSpec] = Field(min_length=1, examples=[_DONORS_EXAMPLE], description=(
        "the donors, absorbed one after another"))
    input_shape: tuple[PositiveInt, ...] = Field(examples=[[1, 8, 8]], description=(
        "one example's shape, without the batch dimension"), json_schema_extra={"accepts": "a list of sizes"})
    calibration: DataSpec | None = Field(default=None, examples=[CALIBRATION_EXAMPLE], description=(
        "the data the depth plans, data-driven alignment, fused ReLUs and BatchNorm statistics use; required "
        "unless all of them are data-free (align: mal or mal-pad, no BatchNorm statistics recomputed)"),
        json_schema_extra={"template": "shown"})
    align: AlignSpec = Field(default_factory=AlignSpec, description="how each donor's channels meet the base's")
    depth: AssemblyDepthSpec | None = Field(default=None, description=(
        "depth alignment, for donors whose depth differs from the base's"))
    layers: Literal["all"] | list[str] = Field(default="all", description=(
        "the base's units that absorb the donors (unit keys) or all; a donor's own layers wins"),
        json_schema_extra={"accepts": "all or a list of unit keys"})
    lam: Lambda | dict[str, Lambda] = Field(default=0.3, description=(
        "λ: a number in [0, 1] (0 keeps the base, 1 takes the donor) or {unit key: λ}; a donor's own lam wins"),
        json_schema_extra={"accepts": "a number in [0, 1] or {unit key: number in [0, 1]}"})
    reset_bn: bool | PositiveInt = Field(default=True, description=(
        "recompute the BatchNorm statistics inside and after the blended units: true (512 samples), a number of "
        "samples, or false (blend them with λ)"))
    evaluate: EvaluationSpec | None = Field(default=None, description=(
        "labelled data to score the base, every donor and the assembled model on (default: no scores)"))
    seed: int = Field(default=0, description="the seed of the factories' initialisation and of the alignment")
    device: str = Field(default="auto", description="auto (a CUDA GPU when present, else the CPU), cpu, cuda:1, ...")
    name: str = Field(default="assembled", description="the assembled model's name")

    @field_validator("reset_bn", mode="before")
    @classmethod
    def _samples(cls, value: object) -> object:
        if isinstance(value, bool) or (isinstance(value, int) and value > 0):
            return value
        raise ValueError(f"give true, false or a positive number of samples, not {value!r}")

    @model_validator(mode="after")
    def _device(self) -> AssemblyConfig:
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a torch device: {exc}") from exc
        return self
