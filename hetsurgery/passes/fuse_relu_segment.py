"""``FuseReluSegment``: consecutive layer units fused into one across their ReLUs (CLAFusion's "merge layers").

For two units ``y = U₂(ReLU(W₁x + b₁))`` with ``U₂ = act₂ ∘ BN₂ ∘ (W₂· + b₂)``, a ReLU is ``D z`` for the
diagonal 0/1 matrix ``D = diag(step(z))``, which depends on the input. Fixing ``D = diag(d)`` gives one
unit: ``y ≈ act₂(BN₂(W₂ D W₁ x + W₂ D b₁ + b₂))``. BatchNorms inside the segment are folded first (in
eval mode a BatchNorm is affine). The pass applies a given ``d`` exactly; estimating it from calibration
data (sign of the sum, majority vote, average of the signs) is ``hetsurgery.plan.fuse_signs``. The result
approximates the segment: ``hetsurgery.merging.fusion.fuse_relu_segment`` reports its error.

ReLU-like activations (GELU, SiLU, Mish, Hardswish, ReLU6: zero far below 0, the identity above it) are taken
as a ReLU, ``D`` estimated the same way: a further approximation. A LayerNorm (or RMSNorm) over the channels
inside the segment is taken as affine, ``γ ⊙ C z / s + β`` with ``C`` the centring (``I − 11ᵀ/d``; none for
RMSNorm) and ``s`` the norm's scale on calibration data, given in ``scales`` (``fuse_signs.norm_scales``).

Only Linear layers (and 1×1 convolutions with stride 1, no padding, no groups: matrices applied at every
position) fuse; anything else is refused with the reason.

Before (``mlp([8, 8])``, units ``layers_0``, ``layers_2``)::

    flatten -> layers_0 -> layers_1 (ReLU) -> layers_2 -> layers_3 (ReLU) -> layers_4

After ``FuseReluSegment(("layers_0", "layers_2"), (d,))``::

    flatten -> layers_2 (Linear 64 -> 8, W₂ D W₁) -> layers_3 (ReLU) -> layers_4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import fx, nn

from hetsurgery.errors import PassError
from hetsurgery.ir import Activation, ModelGraph, OpKind, Unit, UnitKind
from hetsurgery.ir.structure import owner_of
from hetsurgery.passes.base import Recorded, refusal
from hetsurgery.passes.edit import CONVS, ORIGIN_META, editable, node_named, relift


@dataclass(frozen=True, eq=False)
class FuseReluSegment(Recorded):
    """Fuse the layer units ``units`` (keys, consecutive in one stage) into the last of them; ``signs[i]`` is
    the diagonal of ``D`` for the ReLU of ``units[i]`` (0/1 values, or fractions for ``average_sign``) and
    ``scales[i]`` the scale of its LayerNorm (``None`` for a unit without one; ``()``: no unit has one)."""

    units: tuple[str, ...]
    signs: tuple[torch.Tensor, ...]
    scales: tuple[float | None, ...] = ()
    name: ClassVar[str] = "fuse-relu-segment"
    exact: ClassVar[bool] = False

    def why_not(self, g: ModelGraph) -> str | None:
        """Why the segment cannot fuse (``None``: it can), asked without signs or scales and without building."""
        return refusal(lambda: [_layer(g.module, g, u) for u in segment_units(g, self.units)])

    def rewrite(self, g: ModelGraph) -> ModelGraph:
        units = segment_units(g, self.units)
        if len(self.signs) != len(units) - 1:
            raise PassError(f"{g.name}: fusing {len(units)} units needs {len(units) - 1} sign vectors, got "
                            f"{len(self.signs)}")
        gm = editable(g)
        scales = self.scales or (None,) * (len(units) - 1)
        layers = [_layer(gm, g, u, scale) for u, scale in zip(units, [*scales, None], strict=True)]
        weight, bias = layers[0].affine(with_norm=True)
        for i, (d, nxt) in enumerate(zip(self.signs, layers[1:], strict=True)):
            d = torch.as_tensor(d, dtype=torch.float64).flatten()
            if d.numel() != weight.shape[0]:
                raise PassError(f"{g.name}: the signs for unit {units[i].key} have {d.numel()} entries; its "
                                f"ReLU has {weight.shape[0]} channels")
            last = i == len(layers) - 2
            w2, b2 = nxt.affine(with_norm=not last)
            weight, bias = w2 @ (d[:, None] * weight), w2 @ (d * bias) + b2
        # a segment of bias-free layers with no normalisation folded in has a fused bias of exactly zero: the
        # fused layer stays bias-free, as the model's own layers are (CLAFusion's MLPs have no biases)
        biased = any(la.layer.bias is not None for la in layers) or any(la.norm is not None for la in layers[:-1])
        _install(gm, layers[-1], weight, bias if biased else None)
        first_input = node_named(gm, units[0].entry)
        fused = node_named(gm, units[-1].key)
        fused.replace_input_with(fused.args[0], first_input)  # type: ignore[arg-type]
        fused.meta[ORIGIN_META] = FuseReluSegment.name
        for u in reversed(units[:-1]):
            for name in reversed(u.nodes):
                gm.graph.erase_node(node_named(gm, name))
        return relift(gm, g)

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        out: dict[str, Any] = {"pass": self.name, "units": list(self.units), "signs": [
            torch.as_tensor(d, dtype=torch.float64).flatten().tolist() for d in self.signs]}
        return {**out, "scales": list(self.scales)} if self.scales else out

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The pass ``spec()`` describes."""
        return cls(tuple(str(u) for u in spec["units"]),
                   tuple(torch.tensor(d, dtype=torch.float64) for d in spec["signs"]),
                   tuple(None if x is None else float(x) for x in spec.get("scales", ())))


def segment_units(g: ModelGraph, keys: Sequence[str]) -> list[Unit]:
    """The units ``keys`` after checking that they can be fused: two or more consecutive layer units of one
    stage, Linear or 1×1 conv, each but the last ending in a ReLU."""
    if len(keys) < 2:
        raise PassError(f"{g.name}: fusing needs two or more consecutive units, got {list(keys)}")
    units = [g.unit(k) for k in keys]
    stage = next((st for st in g.stages if keys[0] in st.units), None)
    if stage is None or any(u.kind is not UnitKind.LAYER for u in units):
        raise PassError(f"{g.name}: only layer units of a layer stage fuse (a Linear chain); "
                        f"{', '.join(keys)} are not")
    at = stage.units.index(keys[0])
    if tuple(stage.units[at:at + len(keys)]) != tuple(keys):
        raise PassError(f"{g.name}: {', '.join(keys)} are not consecutive units of stage {stage.key} "
                        f"({', '.join(stage.units)})")
    for u in units[:-1]:
        acts = [a for n in u.nodes if (a := g.facts[n].activation) is not None and a is not Activation.IDENTITY]
        if len(acts) != 1 or acts[0] not in RELU_LIKE:
            raise PassError(f"{g.name}: unit {u.key} ends in {', '.join(a.value for a in acts) or 'no activation'}; "
                            "only a ReLU (a diagonal 0/1 matrix that a fused weight can hold) or a ReLU-like "
                            f"activation ({', '.join(a.value for a in RELU_LIKE if a is not Activation.RELU)}) fuses")
    return units


# taken as a ReLU when fused: zero far below 0, the identity above it (the ReLU itself is exact per sample)
RELU_LIKE = (Activation.RELU, Activation.RELU6, Activation.GELU, Activation.SILU, Activation.MISH,
             Activation.HARDSWISH)


@dataclass(frozen=True)
class _Layer:
    """A unit's Linear (or 1×1 conv) and its BatchNorm, or its LayerNorm with the scale that makes it affine."""

    node: fx.Node
    layer: nn.Linear | nn.modules.conv._ConvNd
    norm: nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.RMSNorm | None
    scale: float | None = None

    def affine(self, with_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)``: the unit up to its activation is ``A x + c`` (float64; a LayerNorm as ``_layer_norm``)."""
        w = self.layer.weight.detach().double().reshape(self.layer.weight.shape[0], -1)
        b = self.layer.bias.detach().double() if self.layer.bias is not None else torch.zeros(w.shape[0],
                                                                                             dtype=torch.float64)
        if not with_norm or self.norm is None:
            return w, b
        if isinstance(self.norm, (nn.LayerNorm, nn.RMSNorm)):
            return _layer_norm(self.norm, self.scale, w, b)
        n = self.norm
        mean = n.running_mean.double() if n.running_mean is not None else torch.zeros_like(b)
        var = n.running_var.double() if n.running_var is not None else torch.ones_like(b)
        scale = 1.0 / torch.sqrt(var + n.eps)
        if n.affine:
            scale = scale * n.weight.detach().double()
        shift = (n.bias.detach().double() if n.affine else 0.0) - mean * scale
        return scale[:, None] * w, scale * b + shift


def _layer_norm(n: nn.LayerNorm | nn.RMSNorm, scale: float | None, w: torch.Tensor, b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` after ``w x + b`` taken as affine: ``γ ⊙ C (w x + b) / scale + β``."""
    if scale is None:
        raise PassError("a LayerNorm inside a fused segment needs its scale on calibration data "
                        "(hetsurgery.plan.fuse_signs.norm_scales)")
    if isinstance(n, nn.LayerNorm):  # the mean over the channels is subtracted: a linear map too
        w, b = w - w.mean(0, keepdim=True), b - b.mean()
    gamma = n.weight.detach().double() if n.weight is not None else torch.ones_like(b)
    bias = getattr(n, "bias", None)  # RMSNorm has none
    beta = bias.detach().double() if isinstance(bias, torch.Tensor) else torch.zeros_like(b)
    return (gamma / scale)[:, None] * w, gamma / scale * b + beta


def _layer(gm: fx.GraphModule, g: ModelGraph, u: Unit, scale: float | None = None) -> _Layer:
    node = node_named(gm, u.key)
    layer = gm.get_submodule(str(node.target))
    if isinstance(layer, nn.modules.conv._ConvNd):
        one = all(k == 1 for k in layer.kernel_size) and all(s == 1 for s in layer.stride) and layer.groups == 1 \
            and all(p == 0 for p in layer.padding) and not isinstance(layer, nn.modules.conv._ConvTransposeNd)
        if not one:
            raise PassError(f"{g.name}: unit {u.key} is a {type(layer).__name__} with kernel {layer.kernel_size}, "
                            f"stride {layer.stride}, groups {layer.groups}: only Linear layers and 1x1 convolutions "
                            "(matrices at every position) fuse")
    elif not isinstance(layer, nn.Linear):
        raise PassError(f"{g.name}: unit {u.key} is a {type(layer).__name__}; only Linear and 1x1 conv units fuse")
    kinds = (OpKind.BATCH_NORM, OpKind.LAYER_NORM, OpKind.GROUP_NORM)
    found = [node_named(gm, n) for n in u.nodes if g.facts[n].kind in kinds]
    norms = [gm.get_submodule(str(n.target)) if n.op == "call_module" else None for n in found]
    if len(norms) > 1:
        raise PassError(f"{g.name}: unit {u.key} has {len(norms)} normalisations; fusing folds at most one")
    norm = norms[0] if norms else None
    width = layer.weight.shape[0]
    if found and not (isinstance(norm, nn.modules.batchnorm._BatchNorm) or (isinstance(
            norm, (nn.LayerNorm, nn.RMSNorm)) and tuple(norm.normalized_shape) == (width,))):
        raise PassError(f"{g.name}: unit {u.key} normalises with {found[0].target if norm is None else norm!r}; "
                        "only a BatchNorm, or a LayerNorm or RMSNorm module over the channels alone, fuses")
    return _Layer(node, layer, norm, scale)  # type: ignore[arg-type]


def _install(gm: fx.GraphModule, last: _Layer, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Replace the last unit's layer by one holding the fused ``weight`` and ``bias`` (``None``: a layer
    without a bias)."""
    old = last.layer
    dtype, device = old.weight.dtype, old.weight.device
    out_features, in_features = weight.shape
    new: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    if isinstance(old, nn.Linear):
        new = nn.Linear(in_features, out_features, bias=bias is not None, dtype=dtype, device=device)
        shaped = weight
    else:
        taps = old.weight.dim() - 2
        new = CONVS[taps](in_features, out_features, 1, bias=bias is not None, dtype=dtype, device=device)
        shaped = weight.reshape(out_features, in_features, *([1] * taps))
    with torch.no_grad():
        new.weight.copy_(shaped.to(dtype))
        if bias is not None:
            assert new.bias is not None
            new.bias.copy_(bias.to(dtype))
    owner, leaf = owner_of(gm, str(last.node.target))
    setattr(owner, leaf, new)
