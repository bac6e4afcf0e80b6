"""Reference architectures with width/depth knobs (and, with the merge engine, data and a trainer).

Every factory takes ``in_channels`` (or ``in_features``) and ``num_classes``, so it runs on 8x8
single-channel digits as well as 3x32x32 images. ``ZOO`` names the defaults the CLI knows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial

from torch import nn

from hetsurgery.zoo.densenet import densenet
from hetsurgery.zoo.mlp import mlp
from hetsurgery.zoo.mobilenet import mobilenet
from hetsurgery.zoo.resnet import resnet, resnet20, resnet26, resnet32, resnet50
from hetsurgery.zoo.transformer import transformer
from hetsurgery.zoo.vgg import vgg

ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "vgg": vgg,
    "resnet20": resnet20,
    "resnet26": resnet26,
    "resnet32": resnet32,
    "resnet50": resnet50,
    "transformer": transformer,
    "transformer-mha": partial(transformer, "mha"),
    "densenet": densenet,
    "mobilenet": mobilenet,
}

__all__ = [
    "ZOO",
    "densenet",
    "mlp",
    "mobilenet",
    "resnet",
    "resnet20",
    "resnet26",
    "resnet32",
    "resnet50",
    "resolve",
    "transformer",
    "vgg",
]


def resolve(spec: str) -> Callable[..., nn.Module]:
    """A zoo name (``resnet20``) or ``package.module:function`` to a model factory.

    Raises ``ValueError`` naming the known zoo models when ``spec`` is neither.
    """
    if ":" not in spec:
        if spec not in ZOO:
            raise ValueError(f"unknown model {spec!r}: use one of {', '.join(sorted(ZOO))} or 'package.module:function'")
        return ZOO[spec]
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load model factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"{spec!r} is not callable")
    return factory
