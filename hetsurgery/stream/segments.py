"""Running streamed models over calibration data segment by segment, the way GPTQ runs a model block by block.

The joint graph of the models (``plan.joint``: node ``i`` of every model side by side, observers at the feature
sites) holds their structure on the meta device. It is cut into segments in node order: a new segment starts
where a block of the models' stage of blocks starts, and wherever the tensors a segment reads would pass
``segment_bytes``. For each segment in turn, its layers are built with the tensors read from the checkpoints, it
runs on every calibration batch (the values it reads from earlier segments are kept for all batches: the
activations at the boundary), its observers feed the accumulators, and its layers are released before the next
segment is read. Peak memory is one segment's tensors plus the boundary activations of all batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from hetsurgery.errors import HetsurgeryError
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.batches import input_names, model_input
from hetsurgery.memory import release_free_memory
from hetsurgery.stream.model import Values

SEGMENT_BYTES = 64 * 2**20  # the tensors of all models one segment may read (in float32; a 1.1B Llama MLP: 277 MB)


@dataclass(frozen=True)
class Segmented:
    """A ``plan.stats.Runner`` for streamed models: ``values[k]`` reads model ``k``'s tensors (the joint graph's
    ``m{k}``), ``graphs[k]`` is its graph (where its blocks start)."""

    graphs: Sequence[ModelGraph]
    values: Sequence[Values]
    segment_bytes: int = SEGMENT_BYTES

    def __call__(self, joint: fx.GraphModule, data: Iterable, device: torch.device | str | None,
                 progress: bool, finished: Callable[[Iterable[str]], None] | None = None) -> None:
        nodes = [n for n in joint.graph.nodes if n.op not in ("placeholder", "output")]
        segments = self.cut(joint, nodes)
        position = {n: i for i, seg in enumerate(segments) for n in seg}
        last = {n: max((position.get(u, len(segments)) for u in n.users), default=-1)
                for n in joint.graph.nodes if n.op != "output"}
        names = input_names(joint)
        shared = {id(m) for m in joint.modules()}
        placeholders = [n for n in joint.graph.nodes if n.op == "placeholder"]
        envs: list[dict[fx.Node, object]] = [dict(zip(placeholders, model_input(b, names).to(device), strict=True))
                                             for b in data]
        with torch.no_grad():
            for i, seg in enumerate(tqdm(segments, desc="statistics", unit="segment", disable=not progress,
                                         leave=False)):
                reads = list(dict.fromkeys(a for n in seg for a in n.all_input_nodes if position.get(a) != i))
                keeps = [n for n in seg if last[n] > i]
                module = self._module(joint, seg, reads, keeps, device)
                release_free_memory()  # the checkpoint reads' copies (a 1.1B Llama's layer: ~100 MB left resident)
                for env in envs:
                    outs = module(*[env[a] for a in reads])
                    env.update(zip(keeps, outs, strict=True))
                    for a in reads:
                        if last[a] <= i:
                            del env[a]
                    release_free_memory()  # the batch's intermediate activations
                _empty(module, shared)  # its layers and tensors freed now, whatever still refers to the module
                del module
                release_free_memory()
                if finished is not None:  # the sites this segment observed are done, on every batch
                    finished([str(n.args[0]) for n in seg if n.op == "call_module" and n.target == "observer"])

    def cut(self, joint: fx.GraphModule, nodes: Sequence[fx.Node]) -> list[list[fx.Node]]:
        """The segments: a new one at every block start and where the bytes read would pass the budget."""
        first = self.graphs[0]  # node i of every model runs side by side: model 0's blocks start the segments
        starts = {f"m0.{owner}" for st in first.stages for key in st.units
                  for owner in [_owner(first, first.unit(key))] if owner}
        segments: list[list[fx.Node]] = [[]]
        used = 0
        for n in nodes:
            size = self._bytes(joint, n)
            if segments[-1] and (str(n.target) in starts or used + size > self.segment_bytes) and used:
                segments.append([])
                used = 0
            segments[-1].append(n)
            used += size
        return [s for s in segments if s]

    def _bytes(self, joint: fx.GraphModule, n: fx.Node) -> int:
        if n.op == "call_module":
            held = [*joint.get_submodule(str(n.target)).parameters(), *joint.get_submodule(str(n.target)).buffers()]
        elif n.op == "get_attr":
            held = [t for t in [_attr(joint, str(n.target))] if isinstance(t, torch.Tensor)]
        else:
            return 0
        return sum(t.numel() * 4 for t in held)

    def _module(self, joint: fx.GraphModule, seg: Sequence[fx.Node], reads: Sequence[fx.Node],
                keeps: Sequence[fx.Node], device: torch.device | str | None) -> fx.GraphModule:
        """The segment as a module of its own, taking ``reads`` and returning ``keeps``, its tensors read."""
        graph = fx.Graph()
        run = torch.device(device) if device is not None else torch.device("cpu")
        env = {a: graph.placeholder(a.name) for a in reads}
        root: dict[str, object] = {}
        for n in seg:
            env[n] = graph.node_copy(n, env.__getitem__)
            # the device tracing on meta wrote into the code (arange(..., device=meta)) is the run's
            env[n].args, env[n].kwargs = on_device(env[n].args, run), on_device(env[n].kwargs, run)
            target = str(n.target)
            if n.op == "call_module" and target not in root:
                root[target] = self._layer(joint, target, device)
            elif n.op == "get_attr" and target not in root:
                root[target] = self._tensor(joint, target, device)
        graph.output(tuple(env[n] for n in keeps))
        return fx.GraphModule(root, graph, "segment")

    def _layer(self, joint: fx.GraphModule, target: str, device: torch.device | str | None) -> nn.Module:
        mod = joint.get_submodule(target)
        k, path = _split(target)
        if k is None:
            return mod  # the observer
        memo: dict[int, object] = {}
        for local, t in [*mod.named_parameters(), *mod.named_buffers()]:
            real = self._read(k, f"{path}.{local}", t, device)
            memo[id(t)] = nn.Parameter(real, requires_grad=False) if isinstance(t, nn.Parameter) else real
        return copy.deepcopy(mod, memo)

    def _tensor(self, joint: fx.GraphModule, target: str, device: torch.device | str | None) -> object:
        value = _attr(joint, target)
        k, path = _split(target)
        if k is None or not isinstance(value, torch.Tensor):
            return value
        return self._read(k, path, value, device)

    def _read(self, k: int, name: str, held: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
        values = self.values[k]
        if name in values:
            return values[name]
        if held.is_meta:
            raise HetsurgeryError(f"{self.graphs[k].name}: {name} is neither in the checkpoint nor computed by the "
                                  "model class; the model cannot run streamed")
        return held.to(device) if device is not None else held


def _empty(module: nn.Module, shared: set[int]) -> None:
    """Drop every layer, parameter, buffer and tensor ``module`` and its submodules hold (those not ``shared`` with the
    joint module: the observer). A GraphModule and its graph refer to each other, so only the cycle collector would
    free the module (tensor bytes never trigger it: without this, every segment's layers stayed, 7 GB for a 1.1B
    Llama), and a full collection per segment cost more than the segment's forward passes (statistics of the 1.1B
    Llama pair: 58 s with one, 37 s without)."""
    for m in [m for m in module.modules() if id(m) not in shared]:
        m._parameters.clear()
        m._buffers.clear()
        for name in [k for k, v in vars(m).items() if isinstance(v, torch.Tensor)]:
            delattr(m, name)
        m._modules.clear()


def on_device(args: Any, device: torch.device | str, old: str = "meta") -> Any:
    """``args`` (a node's) with every ``torch.device`` of type ``old`` replaced by ``device``."""
    return fx.node.map_aggregate(args, lambda a: torch.device(device) if isinstance(a, torch.device) and
                                 a.type == old else a)


def _owner(g: ModelGraph, unit: object) -> str | None:
    """The first layer (or tensor) a unit reads: where its block starts in the graph's module."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    for name in getattr(unit, "nodes", ()):
        n = nodes.get(name)
        if n is not None and n.op in ("call_module", "get_attr"):
            return str(n.target)
    return None


def _split(target: str) -> tuple[int | None, str]:
    head, _, rest = target.partition(".")
    return (int(head[1:]), rest) if head.startswith("m") and head[1:].isdigit() and rest else (None, target)


def _attr(root: nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value
