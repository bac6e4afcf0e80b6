"""Units and stages from the dataflow graph (``ModelGraph.dataflow``), by graph algorithms only.

* **Residual blocks.** An add whose two operands carry the same groups joins a residual stream. Its block
  is the region between the node the stream forks at — the add's immediate dominator in the graph of nodes
  that depend on the model input — and the add: every node on a path from the fork to the add, plus the
  channel-wise ops that follow the add alone (ResNet's ReLU). A region whose values leak out (a DenseNet
  concat) or whose fork feeds anything else is no block. Consecutive blocks on one stream form a *block
  stage*; a block that reads another group or shape than it writes (a strided block with a projection
  shortcut) is *fixed*. Halves that repeat with a period (a transformer's attention and MLP halves) are
  grouped into one unit by the smallest period of their op signatures.
* **Layers.** A Linear or Conv outside every block, with the normalisation (BatchNorm, LayerNorm, GroupNorm),
  activations and dropout that follow it alone (so an MLP normalised between its layers is one stage too). Layers that read each other's outputs directly form a *layer stage*, cut where a conv changes
  the spatial size (that conv is fixed and starts the next stage). Layers that write the model output (the
  head) or a residual stream (a ResNet stem, a patch embedding) belong to no stage; a layer that reads the
  model input is fixed (nothing can be inserted before it).

Documented counts on the zoo: an MLP with h hidden layers has one stage of h layers (the first fixed);
a VGG has one stage per pooling block plus one for the classifier's hidden layers; ResNet-20 has three
stages of three blocks, the first blocks of stages 2 and 3 fixed; a transformer of depth d has one stage
of d blocks. A DenseNet's layers are fed by concats, so each forms a one-layer stage and its depth cannot
be aligned; a MobileNet has a stage per run of inverted residuals, and the non-residual first block of
each run is a chain of layers that feeds the run's stream.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from hetsurgery.ir import Activation, ModelGraph, OpKind, Stage, Unit, UnitKind

if TYPE_CHECKING:  # networkx is imported on the first trace, not by `import hetsurgery`
    import networkx as nx

ORIGIN_META = "hetsurgery.origin"  # node.meta key: the structural pass that inserted or fused the node
_ROOT = "__root__"
_ADD = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})
_FOLLOWERS = frozenset({OpKind.BATCH_NORM, OpKind.LAYER_NORM, OpKind.GROUP_NORM, OpKind.ELEMENTWISE})
_LAYERS = frozenset({OpKind.LINEAR, OpKind.CONV})
_WEIGHTED = frozenset({*_LAYERS, OpKind.FUNCTIONAL_LINEAR, OpKind.ADDMM, OpKind.MULTIHEAD_ATTENTION})
_READS_DATA = frozenset({*_WEIGHTED, OpKind.EMBEDDING, OpKind.BATCH_NORM, OpKind.LAYER_NORM, OpKind.GROUP_NORM})
_QUIET = frozenset({OpKind.GET_ATTR, OpKind.GETITEM, OpKind.SHAPE})  # not part of a block's op signature


@dataclass(frozen=True)
class _Half:
    """One residual add's block: its fork, its nodes (graph order), its add and its exit."""

    fork: str
    nodes: tuple[str, ...]
    add: str
    exit: str
    fixed: str | None


def find_units(g: ModelGraph) -> tuple[tuple[Unit, ...], tuple[Stage, ...]]:
    """The units and stages of ``g`` (whose ``facts`` and ``groups`` are filled in)."""
    flow = g.dataflow()
    for node in g.module.graph.nodes:
        flow.nodes[node.name]["node"] = node
    order = {n: i for i, n in enumerate(flow.nodes)}
    halves = _residual_halves(g, flow, order)
    block_units, block_stages = _blocks(g, halves, flow)
    inside = {n for u in block_units for n in u.nodes}
    layer_units, layer_stages = _layers(g, flow, inside, streams={gid for h in halves
                                                                   for gid in g.facts[h.add].writes})
    units = tuple(sorted([*block_units, *layer_units], key=lambda u: order[u.nodes[0]]))
    ordered = sorted([*block_stages, *layer_stages], key=lambda st: order[st.entry])
    return units, tuple(replace(st, key=f"stage{i}") for i, st in enumerate(ordered))


# -- residual blocks ------------------------------------------------------------------------------------

def _residual_halves(g: ModelGraph, flow: nx.DiGraph, order: dict[str, int]) -> list[_Half]:
    import networkx as nx

    live = _input_dependent(flow)
    dag = flow.subgraph(live).copy()
    dag.remove_edges_from([(n, s) for n in live if flow.nodes[n]["kind"] is OpKind.SHAPE for s in flow.successors(n)])
    dag.add_edges_from((_ROOT, n) for n in live if flow.nodes[n]["op"] == "placeholder")
    idom = nx.immediate_dominators(dag, _ROOT) if live else {}
    halves = []
    for name in flow.nodes:
        if not _is_residual_add(g, flow, name) or name not in idom:
            continue
        fork = idom[name]
        if fork == _ROOT:
            continue
        region = _between(dag, fork, name, order) | {name}
        region |= _constants_used_only_in(flow, region)
        region |= _size_reads(flow, region, fork, live)
        if not any(flow.nodes[n]["kind"] in _WEIGHTED for n in region):
            continue  # no layer on the branch (a rotary embedding's x*cos + rotate(x)*sin): no block
        if any(succ not in region and flow.nodes[succ]["kind"] is not OpKind.SHAPE
               for n in region - {name} for succ in flow.successors(n)):
            continue  # a value leaves the block before its add (reading its size is fine): no block
        if any(succ not in region and flow.nodes[succ]["kind"] is not OpKind.SHAPE for succ in flow.successors(fork)):
            continue  # the fork also feeds something else (a long skip): no sequential block
        exit_ = _trailing(g, flow, name, region)
        nodes = tuple(sorted(region | set(exit_), key=order.__getitem__))
        fa, fe = g.facts[name], g.facts[fork]
        fixed = None if (fe.writes == fa.writes and fe.shape == fa.shape) else \
            "reads another group or shape than it writes (a projection shortcut or a stride)"
        halves.append(_Half(fork, nodes, name, exit_[-1] if exit_ else name, fixed))
    return halves


def _input_dependent(flow: nx.DiGraph) -> set[str]:
    """The nodes whose values depend on the model input's values: what depends on its shape only (positions
    from ``x.shape[1]``, a rotary table, a causal mask) is a constant here, shared by every block, and so is what
    depends only on inputs that no layer reads as its data (an attention mask)."""
    starts = _data_inputs(flow)
    out, todo = set(starts), list(starts)
    while todo:
        n = todo.pop()
        if flow.nodes[n]["kind"] is OpKind.SHAPE and flow.nodes[n]["op"] != "placeholder":
            continue  # a size read: what follows it depends on no value
        for succ in flow.successors(n):
            if succ not in out:
                out.add(succ)
                todo.append(succ)
    return {n for n in out if flow.nodes[n]["op"] != "output"}


def _data_inputs(flow: nx.DiGraph) -> list[str]:
    """The model inputs whose values a layer reads as its data: through nodes that carry no group, the first
    argument of a layer (an embedding's ids, a conv's pixels; not an attention's mask, not the condition of a
    ``where``). All the inputs when none is."""
    inputs = [n for n, d in flow.nodes(data=True) if d["op"] == "placeholder"]
    out = []
    for p in inputs:
        seen, todo = {p}, [p]
        while todo:
            n = todo.pop()
            for succ in flow.successors(n):
                if flow.nodes[succ]["writes"] and flow.nodes[succ]["kind"] is not OpKind.SHAPE:
                    if flow.nodes[succ]["kind"] in _READS_DATA and _first_input(flow, succ) == n:
                        out.append(p)
                        todo = []
                        break
                elif succ not in seen and flow.nodes[succ]["kind"] is not OpKind.SHAPE:
                    seen.add(succ)
                    todo.append(succ)
    return out or inputs


def _is_residual_add(g: ModelGraph, flow: nx.DiGraph, name: str) -> bool:
    node = flow.nodes[name]["node"]
    if flow.nodes[name]["kind"] is not OpKind.BINARY or node.target not in _ADD or len(node.args) < 2:
        return False
    a, b = node.args[0], node.args[1]
    if not (hasattr(a, "name") and hasattr(b, "name")):
        return False
    fa, fb, fo = g.facts[a.name], g.facts[b.name], g.facts[name]
    return bool(fa.writes) and fa.writes == fb.writes and fa.shape == fb.shape == fo.shape


def _between(dag: nx.DiGraph, fork: str, add: str, order: dict[str, int]) -> set[str]:
    """The nodes on a path from ``fork`` to ``add`` (both excluded): reached from ``fork`` and reaching ``add``,
    searched only between the two in graph order (so a model's blocks cost what they hold, not the model)."""
    lo, hi = order[fork], order[add]
    ahead = _reach(fork, lambda n: dag.successors(n), lambda n: order[n] < hi)
    behind = _reach(add, lambda n: dag.predecessors(n), lambda n: order.get(n, -1) > lo)
    return ahead & behind


def _reach(start: str, step: Callable[[str], Iterable[str]], keep: Callable[[str], bool]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for n in step(todo.pop()):
            if n not in seen and keep(n):
                seen.add(n)
                todo.append(n)
    return seen


def _size_reads(flow: nx.DiGraph, region: set[str], fork: str, live: set[str]) -> set[str]:
    """The nodes that compute sizes from the region's values (``b, s, _ = x.shape``) for the region alone: part of
    the block (a copy of the block computes them from its own values). Searched from the region outwards."""
    inside = region | {fork}
    found: set[str] = set()
    todo = [s for n in inside for s in flow.successors(n)]
    while todo:
        n = todo.pop()
        if n in region or n in found or (n in live and flow.nodes[n]["kind"] is not OpKind.SHAPE):
            continue
        preds = set(flow.predecessors(n))
        if all(p in inside or p in found or p not in live for p in preds):
            found.add(n)
            todo.extend(flow.successors(n))
    while True:  # keep only those whose every reader is in the block
        leaking = {n for n in found if any(s not in region and s not in found for s in flow.successors(n))}
        if not leaking:
            return found
        found -= leaking


def _constants_used_only_in(flow: nx.DiGraph, region: set[str]) -> set[str]:
    """Parameters read with get_attr whose every reader is inside ``region`` (a layer scale, a bias)."""
    return {p for n in region for p in flow.predecessors(n) if flow.nodes[p]["op"] == "get_attr"
            and set(flow.successors(p)) <= region}


def _trailing(g: ModelGraph, flow: nx.DiGraph, start: str, region: set[str]) -> list[str]:
    """The channel-wise ops that follow ``start`` alone (one user each, reading it as their first input)."""
    out: list[str] = []
    cur = start
    while True:
        users = list(flow.successors(cur))
        if len(users) != 1:
            return out
        nxt = users[0]
        f = g.facts[nxt]
        if f.kind is not OpKind.ELEMENTWISE or f.activation is None or nxt in region or \
                _first_input(flow, nxt) != cur:
            return out
        out.append(nxt)
        cur = nxt


def _first_input(flow: nx.DiGraph, name: str) -> str | None:
    node = flow.nodes[name]["node"]
    first = node.args[0] if node.args else None
    return getattr(first, "name", None)


def _post_norms(g: ModelGraph, flow: nx.DiGraph, halves: list[_Half]) -> list[_Half]:
    """Post-norm blocks (BERT's ``LayerNorm(x + f(x))``): a half whose add alone feeds a normalisation that the
    next half forks at ends with that normalisation, and so does the last half of such a chain."""
    def norm_after(h: _Half) -> str | None:
        users = list(flow.successors(h.exit))
        return users[0] if len(users) == 1 and g.facts[users[0]].kind is OpKind.LAYER_NORM else None

    forks = {h.fork for h in halves}
    post = {h.add: n for h in halves if (n := norm_after(h)) is not None and n in forks}
    for h in halves:  # the last half of a post-norm chain: the one its predecessor's norm forks
        n = norm_after(h)
        if n is not None and h.add not in post and any(p == h.fork for p in post.values()):
            post[h.add] = n
    return [replace(h, nodes=(*h.nodes, post[h.add]), exit=post[h.add]) if h.add in post else h for h in halves]


def _blocks(g: ModelGraph, halves: list[_Half], flow: nx.DiGraph) -> tuple[list[Unit], list[Stage]]:
    halves = _post_norms(g, flow, halves)
    by_fork = {h.fork: h for h in halves}
    follows = {h.exit for h in halves}
    units: list[Unit] = []
    stages: list[Stage] = []
    for first in halves:
        if first.fork in follows:
            continue  # it continues a chain that starts earlier
        chain = [first]
        while chain[-1].exit in by_fork:
            chain.append(by_fork[chain[-1].exit])
        for run in _by_stream(g, chain):
            grouped = _grouped(g, flow, run)
            units += grouped
            stages.append(Stage("", UnitKind.BLOCK, tuple(u.key for u in grouped), grouped[0].entry))
    return units, stages


def _by_stream(g: ModelGraph, chain: list[_Half]) -> list[list[_Half]]:
    """Split a chain of blocks where the stream group changes (a fixed block starts its new stream)."""
    runs: list[list[_Half]] = []
    for h in chain:
        if runs and g.facts[runs[-1][-1].add].writes == g.facts[h.add].writes:
            runs[-1].append(h)
        else:
            runs.append([h])
    return runs


def _grouped(g: ModelGraph, flow: nx.DiGraph, run: list[_Half]) -> list[Unit]:
    """Units of a run: fixed halves alone; free halves grouped by the smallest period of their signatures."""
    units: list[Unit] = []
    free: list[_Half] = []
    for h in [*run, None]:
        if h is not None and h.fixed is None:
            free.append(h)
            continue
        if free:
            p = _period([_signature(flow, x) for x in free])
            units += [_block_unit(g, flow, free[i:i + p]) for i in range(0, len(free), p)]
            free = []
        if h is not None:
            units.append(_block_unit(g, flow, [h]))
    return units


def _signature(flow: nx.DiGraph, h: _Half) -> frozenset[tuple[str, int]]:
    kinds = Counter(f"{flow.nodes[n]['kind']}:{flow.nodes[n]['target'] if flow.nodes[n]['op'] != 'call_module' else ''}"
                    for n in h.nodes if flow.nodes[n]["kind"] not in _QUIET)
    return frozenset(kinds.items())


def _period(sigs: Sequence[frozenset[tuple[str, int]]]) -> int:
    n = len(sigs)
    return next(p for p in range(1, n + 1) if n % p == 0 and all(sigs[i] == sigs[i + p] for i in range(n - p)))


def _block_unit(g: ModelGraph, flow: nx.DiGraph, halves: list[_Half]) -> Unit:
    nodes = tuple(n for h in halves for n in h.nodes)
    key = next((n for n in nodes if flow.nodes[n]["op"] == "call_module"), halves[0].add)
    fixed = next((h.fixed for h in halves if h.fixed), None)
    return Unit(key, UnitKind.BLOCK, nodes, entry=halves[0].fork, exit=halves[-1].exit, pre=halves[-1].add,
                fixed=fixed, origin=_origin(flow, nodes))


# -- layers ---------------------------------------------------------------------------------------------

def _layers(g: ModelGraph, flow: nx.DiGraph, inside: set[str], streams: set[int]
            ) -> tuple[list[Unit], list[Stage]]:
    units = [_layer_unit(g, flow, n, inside) for n in flow.nodes
             if flow.nodes[n]["kind"] in _LAYERS and n not in inside]
    by_exit = {u.exit: u for u in units}
    outside_stages: list[Unit] = []
    staged: list[Unit] = []
    for u in units:
        writes = g.facts[u.exit].writes
        if any(g.groups[gid].frozen and g.groups[gid].by_design for gid in writes):
            outside_stages.append(_fix(u, "writes the model output"))
        elif set(writes) & streams:
            outside_stages.append(_fix(u, "feeds a residual stream"))
        else:
            staged.append(u)
    stages: list[Stage] = []
    runs: list[list[Unit]] = []
    staged_keys = {u.key for u in staged}
    for u in staged:
        before = by_exit.get(u.entry)
        if runs and before is not None and before.key in staged_keys and runs[-1][-1].key == before.key \
                and u.fixed is None:
            runs[-1].append(u)
        else:
            runs.append([u])
    for run in runs:
        stages.append(Stage("", UnitKind.LAYER, tuple(u.key for u in run), run[0].entry))
    fixed_keys = {u.key: u for u in [*outside_stages, *staged]}
    return list(fixed_keys.values()), stages


def _layer_unit(g: ModelGraph, flow: nx.DiGraph, name: str, inside: set[str]) -> Unit:
    nodes, cur = [name], name
    while True:
        users = list(flow.successors(cur))
        if len(users) != 1:
            break
        nxt = users[0]
        if nxt in inside or g.facts[nxt].kind not in _FOLLOWERS or _first_input(flow, nxt) != cur:
            break
        nodes.append(nxt)
        cur = nxt
    pre = name  # the last node before the first activation: what CLAFusion compares
    for n in nodes[1:]:
        if g.facts[n].activation not in (None, Activation.IDENTITY):
            break
        pre = n
    entry = _first_input(flow, name) or name
    fe, fo = g.facts[entry], g.facts[name]
    fixed = None
    if not fe.writes:
        fixed = "reads the model input"
    elif fo.kind is OpKind.CONV and fe.shape is not None and fo.shape is not None and fe.shape[2:] != fo.shape[2:]:
        fixed = "changes the spatial size"
    return Unit(name, UnitKind.LAYER, tuple(nodes), entry=entry, exit=cur, pre=pre, fixed=fixed,
                origin=_origin(flow, nodes))


def _fix(u: Unit, why: str) -> Unit:
    return Unit(u.key, u.kind, u.nodes, u.entry, u.exit, u.pre, u.fixed or why, u.origin)


def _origin(flow: nx.DiGraph, nodes: Iterable[str]) -> str:
    """The pass that created these nodes (recorded by structural passes in ``node.meta``), or ``""``."""
    return next((o for n in nodes if (o := flow.nodes[n]["node"].meta.get(ORIGIN_META))), "")
