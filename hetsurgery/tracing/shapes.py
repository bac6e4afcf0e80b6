"""Shape propagation: run a ``GraphModule`` once on example inputs and record ``tensor_meta`` on every node.

When the inputs do not fit, the error names the given shapes, the first node that failed, what that node
expects when it is a layer with a known input size, and the error on one line (no fx internals). The run can
also keep, for the nodes a caller asks for, the values of their arguments (copies), for the inliner and the
equivariance probe to run those nodes again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from hetsurgery.errors import TracingError

Arguments = tuple[tuple[Any, ...], dict[str, Any]]  # a node's args and kwargs, as values
NUMBER_META = "hetsurgery.number"  # node.meta key: the plain number a node computed on the example inputs


class _Recording(fx.Interpreter):
    """What fx's ShapeProp records (``tensor_meta``, ``type``), without printing a traceback on failure, and
    remembering which node was running when something failed."""

    failed: fx.Node | None = None

    def __init__(self, gm: fx.GraphModule, keep: Callable[[fx.Node], bool] | None) -> None:
        super().__init__(gm)
        self.keep = keep
        self.kept: dict[fx.Node, Arguments] = {}

    def run_node(self, n: fx.Node) -> Any:
        if self.keep is not None and self.keep(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.kept[n] = cast(Arguments, map_aggregate((args, kwargs), _copy))
        try:
            result = super().run_node(n)
        except Exception:
            if self.failed is None:
                self.failed = n
            raise
        tensors = []

        def extract(obj: Any) -> Any:
            if isinstance(obj, torch.Tensor):
                tensors.append(obj)
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if tensors:
            n.meta["tensor_meta"] = meta
        elif isinstance(result, (int, float, bool)):  # a size computed from shapes (``x.shape[-1] // 2``)
            n.meta[NUMBER_META] = result
        n.meta["type"] = type(result)
        return result


def _copy(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], name: str,
                     keep: Callable[[fx.Node], bool] | None = None) -> dict[fx.Node, Arguments]:
    """``tensor_meta`` on every node (eval mode, no grad; the train/eval flags of every module are restored);
    returns copies of the arguments of the nodes ``keep`` selects."""
    flags = {m: m.training for m in gm.modules()}
    prop = _Recording(gm, keep)
    try:
        gm.eval()
        with torch.no_grad():
            prop.run(*inputs)
    except Exception as exc:
        raise TracingError(_explain(name, gm, inputs, prop.failed, exc)) from None
    finally:
        for m, flag in flags.items():
            m.train(flag)
    return prop.kept


def _explain(name: str, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], node: fx.Node | None,
             exc: BaseException) -> str:
    given = ", ".join(f"{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)
    cause = exc
    text = str(cause).split("While executing")[0]  # fx's Interpreter appends the node and its own hints
    detail = " ".join(text.split())[:300]
    where = ""
    if node is not None:
        where = f" at node {node.name} ({_describe(gm, node)}"
        expects = _expects(gm, node)
        where += f", which expects {expects})" if expects else ")"
    return (f"{name}: the example inputs of shape {given} do not fit the model{where}: "
            f"{type(cause).__name__}: {detail}. Give example inputs of the shape and dtype the model takes "
            "(one batch, the batch dimension first).")


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return f"{type(mod).__name__} {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _expects(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op != "call_module":
        return ""
    mod = gm.get_submodule(str(node.target))
    if isinstance(mod, nn.Linear):
        return f"inputs of shape (*, {mod.in_features})"
    if isinstance(mod, nn.modules.conv._ConvNd):
        taps = ", ".join("*" for _ in mod.kernel_size)
        return f"inputs of shape (N, {mod.in_channels}, {taps})"
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return f"inputs with {mod.num_features} channels in dim 1"
    if isinstance(mod, nn.LayerNorm):
        return f"inputs ending in {tuple(mod.normalized_shape)}"
    if isinstance(mod, nn.Embedding):
        return f"integer indices below {mod.num_embeddings}"
    return ""
