"""Where OTFusion looks at neurons: before their nonlinearity (OTFusion's activation mode and CLAFusion run
with ``--prelu-acts``), where hetsurgery's other matching methods look after it.

``pre_activation(g)`` is ``g`` with every group site that is the output of a nonlinear elementwise node (ReLU,
GELU, ...) moved to that node's input: the same channels, in the same layout, before the function. Statistics
streamed on it (``collect_stats(pre_activation(g) for each model, ...)``) are the pre-activations' moments;
nothing else about the graph changes.

>>> import torch, hetsurgery as hs
>>> g = hs.trace(hs.zoo.mlp([6], in_features=4, num_classes=2), torch.randn(2, 4))
>>> [s.node for s in g.groups[0].sites], [s.node for s in pre_activation(g).groups[0].sites]
(['layers_1'], ['layers_0'])
"""

from __future__ import annotations

from dataclasses import replace

from torch import fx

from hetsurgery.ir import Activation, ModelGraph, PermGroup, Site


def pre_activation(g: ModelGraph) -> ModelGraph:
    """``g`` observed before its nonlinearities (a site that is no activation's output stays where it is)."""
    nodes = {n.name: n for n in g.module.graph.nodes}
    return replace(g, groups=tuple(_moved(grp, g, nodes) for grp in g.groups))


def _moved(grp: PermGroup, g: ModelGraph, nodes: dict[str, fx.Node]) -> PermGroup:
    sites = tuple(dict.fromkeys(_before(site, g, nodes) for site in grp.sites))
    return grp if sites == grp.sites else replace(grp, sites=sites)


def _before(site: Site, g: ModelGraph, nodes: dict[str, fx.Node]) -> Site:
    """The site at the input of the activation whose output it is (elementwise: the layout is the same)."""
    facts = g.facts.get(site.node)
    node = nodes.get(site.node)
    if facts is None or node is None or facts.activation in (None, Activation.IDENTITY) or not node.args:
        return site
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.name not in g.facts or g.facts[source.name].shape != facts.shape:
        return site  # not a plain elementwise input: keep the site
    return replace(site, node=source.name)
