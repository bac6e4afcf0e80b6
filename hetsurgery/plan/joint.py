"""Running all models together: one fx graph that interleaves their nodes and observes shared sites.

The models share a topology, so their node lists line up. The joint graph runs node ``i`` of every
model, then, where node ``i`` is a feature site, hands the K outputs to an observer module. Each
activation is consumed right after it is made and freed after its last use (fx's generated code
drops dead values), so memory stays that of the forward passes plus the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import fx, nn

from hetsurgery.errors import HetsurgeryError
from hetsurgery.ir import ModelGraph, Site
from hetsurgery.ir.lowering import tap_module, to_module

__all__ = ["features", "joint_module", "site_view", "sites_by_node", "tap_module"]


def site_view(out: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """One site's features as ``(A, size, M)``: leading positions, channels, trailing positions (a view
    when the activation is contiguous and the channels are not interleaved). Channel ``c``'s ``inner``
    positions join the trailing ones."""
    if site.packed:
        seg = out.narrow(site.dim, site.offset, size * site.inner)
    else:
        idx = torch.as_tensor(site.positions(size), device=out.device)
        seg = out.index_select(site.dim, idx)
    lead = 1
    for n in seg.shape[:site.dim]:
        lead *= n
    return seg.reshape(lead, size, -1)


def features(out: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """The ``(samples, size)`` feature matrix of one site (a copy; for tests and small inspections)."""
    return site_view(out, site, size).transpose(1, 2).reshape(-1, size).clone()


class Observer(nn.Module):
    """Called by the joint graph as ``observer(node_name, out_0, …, out_{K-1})``."""

    def __init__(self, sink: Callable[[str, Sequence[torch.Tensor]], None]) -> None:
        super().__init__()
        self.sink = sink

    def forward(self, name: str, *outs: torch.Tensor) -> None:
        self.sink(name, outs)


def joint_module(graphs: Sequence[ModelGraph], site_nodes: set[str], observer: Observer,
                 shortcuts: Sequence[Mapping[str, str]] = ()) -> fx.GraphModule:
    """One module running every graph (sharing their tensors) and calling ``observer`` at ``site_nodes``.
    ``shortcuts[k]`` maps nodes of model ``k`` that return one of their inputs unchanged (a residual add whose
    branch is zero) to that input: the joint graph takes its value instead, and what only fed the node is never
    run."""
    modules = [to_module(g, share=True).eval() for g in graphs]
    lists = [list(m.graph.nodes) for m in modules]
    by_name = [{n.name: n for n in nodes} for nodes in lists]
    if any([n.name for n in nodes] != [n.name for n in lists[0]] for nodes in lists):
        raise HetsurgeryError("the models' traced graphs differ node by node; they cannot be run together")
    root = nn.Module()
    for k, m in enumerate(modules):
        root.add_module(f"m{k}", m)
    root.add_module("observer", observer)
    graph = fx.Graph()
    envs: list[dict[fx.Node, fx.Node]] = [{} for _ in modules]
    observed = []
    for i, first in enumerate(lists[0]):
        if first.op == "output":
            continue
        if first.op == "placeholder":
            shared = graph.placeholder(first.name)
            for k in range(len(modules)):
                envs[k][lists[k][i]] = shared
            continue
        for k, nodes in enumerate(lists):
            env = envs[k]
            same = shortcuts[k].get(nodes[i].name) if k < len(shortcuts) else None
            if same is not None:
                env[nodes[i]] = env[by_name[k][same]]
                continue
            new = graph.node_copy(nodes[i], env.__getitem__)
            if new.op in ("call_module", "get_attr"):
                new.target = f"m{k}.{new.target}"
            envs[k][nodes[i]] = new
        if first.name in site_nodes:
            observed.append(graph.call_module("observer", (first.name, *(envs[k][lists[k][i]] for k in range(len(lists))))))
    graph.output(tuple(observed))
    gm = fx.GraphModule(root, graph, "joint")
    gm.graph.eliminate_dead_code()  # everything after the last site is never needed
    gm.recompile()
    return gm.eval()


def sites_by_node(graphs: Sequence[ModelGraph], gids: Sequence[int]) -> Mapping[str, list[tuple[int, list[Site]]]]:
    """For each site node: the groups seen there and, per model, where (offsets follow each model's widths)."""
    out: dict[str, list[tuple[int, list[Site]]]] = {}
    for gid in gids:
        per_model = [g.group(gid).sites for g in graphs]
        for i, site in enumerate(per_model[0]):
            out.setdefault(site.node, []).append((gid, [sites[i] for sites in per_model]))
    return out
