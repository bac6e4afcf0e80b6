"""``FuseReluSegment``: consecutive layer units fused into one across their ReLUs (CLAFusion's "merge layers").

For two units ``y = U₂(ReLU(W₁x + b₁))`` with ``U₂ = act₂ ∘ BN₂ ∘ (W₂· + b₂)``, a ReLU is ``D z`` for the
diagonal 0/1 matrix ``D = diag(step(z))``, which depends on the input. Fixing ``D = diag(d)`` gives one
unit: ``y ≈ act₂(BN₂(W₂ D W₁ x + W₂ D b₁ + b₂))``. BatchNorms inside the segment are folded first (in
eval mode a BatchNorm is affine). The pass applies a given ``d`` exactly; estimating it from calibration
data (sign of the sum, majority vote, average of the signs) is ``hetsurgery.plan.fuse_signs``. The result
approximates the segment: ``hetsurgery.merge.balance.fuse_relu_segment`` reports its error.

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
from hetsurgery.passes.edit import ORIGIN_META, editable, node_named, relift
from hetsurgery.passes.insert_identity import CONVS


@dataclass(frozen=True, eq=False)
class FuseReluSegment:
    """Fuse the layer units ``units`` (keys, consecutive in one stage) into the last of them; ``signs[i]`` is
    the diagonal of ``D`` for the ReLU of ``units[i]`` (0/1 values, or fractions for ``average_sign``)."""

    units: tuple[str, ...]
    signs: tuple[torch.Tensor, ...]
    name: ClassVar[str] = "fuse-relu-segment"
    exact: ClassVar[bool] = False

    def __call__(self, g: ModelGraph) -> ModelGraph:
        units = segment_units(g, self.units)
        if len(self.signs) != len(units) - 1:
            raise PassError(f"{g.name}: fusing {len(units)} units needs {len(units) - 1} sign vectors, got "
                            f"{len(self.signs)}")
        gm = editable(g)
        layers = [_layer(gm, g, u) for u in units]
        weight, bias = layers[0].affine(with_norm=True)
        for i, (d, nxt) in enumerate(zip(self.signs, layers[1:], strict=True)):
            d = torch.as_tensor(d, dtype=torch.float64).flatten()
            if d.numel() != weight.shape[0]:
                raise PassError(f"{g.name}: the signs for unit {units[i].key} have {d.numel()} entries; its "
                                f"ReLU has {weight.shape[0]} channels")
            last = i == len(layers) - 2
            w2, b2 = nxt.affine(with_norm=not last)
            weight, bias = w2 @ (d[:, None] * weight), w2 @ (d * bias) + b2
        _install(gm, layers[-1], weight, bias)
        first_input = node_named(gm, units[0].entry)
        fused = node_named(gm, units[-1].key)
        fused.replace_input_with(fused.args[0], first_input)  # type: ignore[arg-type]
        fused.meta[ORIGIN_META] = FuseReluSegment.name
        for u in reversed(units[:-1]):
            for name in reversed(u.nodes):
                gm.graph.erase_node(node_named(gm, name))
        return relift(gm, g, self.spec())

    def spec(self) -> dict[str, Any]:
        """The pass as JSON-able data (``hetsurgery.passes.replay`` makes it again)."""
        return {"pass": self.name, "units": list(self.units),
                "signs": [torch.as_tensor(d, dtype=torch.float64).flatten().tolist() for d in self.signs]}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Self:
        """The pass ``spec()`` describes."""
        return cls(tuple(str(u) for u in spec["units"]),
                   tuple(torch.tensor(d, dtype=torch.float64) for d in spec["signs"]))


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
        if acts != [Activation.RELU]:
            raise PassError(f"{g.name}: unit {u.key} ends in {', '.join(a.value for a in acts) or 'no activation'}; "
                            "only a ReLU is a diagonal 0/1 matrix that a fused weight can hold")
    return units


@dataclass(frozen=True)
class _Layer:
    """A unit's Linear (or 1×1 conv) and BatchNorm, as matrices."""

    node: fx.Node
    layer: nn.Linear | nn.modules.conv._ConvNd
    norm: nn.modules.batchnorm._BatchNorm | None

    def affine(self, with_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)``: the unit up to its activation is ``A x + c`` (float64)."""
        w = self.layer.weight.detach().double().reshape(self.layer.weight.shape[0], -1)
        b = self.layer.bias.detach().double() if self.layer.bias is not None else torch.zeros(w.shape[0],
                                                                                             dtype=torch.float64)
        if not with_norm or self.norm is None:
            return w, b
        n = self.norm
        mean = n.running_mean.double() if n.running_mean is not None else torch.zeros_like(b)
        var = n.running_var.double() if n.running_var is not None else torch.ones_like(b)
        scale = 1.0 / torch.sqrt(var + n.eps)
        if n.affine:
            scale = scale * n.weight.detach().double()
        shift = (n.bias.detach().double() if n.affine else 0.0) - mean * scale
        return scale[:, None] * w, scale * b + shift


def _layer(gm: fx.GraphModule, g: ModelGraph, u: Unit) -> _Layer:
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
    norms = [gm.get_submodule(str(node_named(gm, n).target)) for n in u.nodes
             if g.facts[n].kind is OpKind.BATCH_NORM]
    if len(norms) > 1:
        raise PassError(f"{g.name}: unit {u.key} has {len(norms)} BatchNorms; fusing folds at most one")
    return _Layer(node, layer, norms[0] if norms else None)  # type: ignore[arg-type]


def _install(gm: fx.GraphModule, last: _Layer, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Replace the last unit's layer by one holding the fused ``weight`` and ``bias``."""
    old = last.layer
    dtype, device = old.weight.dtype, old.weight.device
    out_features, in_features = weight.shape
    new: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    if isinstance(old, nn.Linear):
        new = nn.Linear(in_features, out_features, dtype=dtype, device=device)
        shaped = weight
    else:
        taps = old.weight.dim() - 2
        new = CONVS[taps](in_features, out_features, 1, dtype=dtype, device=device)
        shaped = weight.reshape(out_features, in_features, *([1] * taps))
    assert new.bias is not None
    with torch.no_grad():
        new.weight.copy_(shaped.to(dtype))
        new.bias.copy_(bias.to(dtype))
    owner, _, leaf = str(last.node.target).rpartition(".")
    setattr(gm.get_submodule(owner) if owner else gm, leaf, new)
