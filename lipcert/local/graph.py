"""Local constants of residual graphs: the chain's local bound on the graph's chain form, then the graph
recursion with the slopes it restricted (docs/decisions.md 45).

A :class:`~lipcert.graph.GraphNetwork` is bounded on a ball through :func:`lipcert.graph_chain.graph_chain`, the
chain that carries every shortcut beside its branch by identity neurons.  :func:`lipcert.local.bound.local_bound`
on that chain gives, for every pre-activation of every block, an interval over the ball (the centre's value
plus r times its per-neuron constant through the factored recursion, intersected with interval propagation;
shortcut and branch are one state, so no correlation is lost at the sums), the slopes restricted to it
(identity neurons keep [1, 1]) and its own constants.  :func:`graph_recursion` with those slopes then carries
the form of decisions 31 through the blocks, each step a residual-block certificate of decisions 30 (greedy:
each block's closed forms scored by their own next form, no look-ahead), on the same ball; every margin
takes the least of all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from ..bounds.graph_blocks import graph_recursion
from ..bounds.result import Gram
from ..bounds.rules import Rule
from ..errors import GraphNetworkError
from ..graph import GraphNetwork
from ..graph_chain import GraphChain, graph_chain
from ..network import Network, require_network
from .bound import LOCAL_DAMPINGS, LOCAL_RULES, Known, LocalBound, local_bound

RECURSION = "graph recursion"
"""Name of the graph recursion's pass among a graph's :attr:`LocalBound.grams`."""
LocalModel = Network | GraphChain
"""What local radii run on: a dense chain, or a graph with its chain form."""


def local_model(net: Network | GraphNetwork | GraphChain, verb: str) -> LocalModel:
    """A graph's :class:`~lipcert.graph_chain.GraphChain`, or a chain densified by
    :func:`~lipcert.network.require_network` (a GraphChain is returned as it is)."""
    if isinstance(net, GraphChain):
        return net
    if isinstance(net, GraphNetwork):
        return graph_chain(net)
    return require_network(net, verb)


def chain_of(model: LocalModel) -> Network:
    """The chain a model's local bounds run on (for a graph, its chain form)."""
    return model.chain if isinstance(model, GraphChain) else model


def model_local_bound(model: LocalModel, x: np.ndarray | torch.Tensor, radius: float, norm: str | float = 2, *,
                      rules: Sequence[Rule | str] = LOCAL_RULES, dampings: Sequence[str] = LOCAL_DAMPINGS,
                      known: Known | None = None, anchored: bool = False) -> LocalBound:
    """:func:`~lipcert.local.bound.local_bound` of a chain, or of a graph (module docstring).

    For a graph the result's intervals and slopes are those of its chain form's hidden layers (see
    :attr:`GraphChain.sites`), and its grams add the pass :data:`RECURSION`.  ``known`` (a verifier's
    intervals, given per layer of a chain) is refused for graphs with :class:`~lipcert.errors.GraphNetworkError`.
    """
    if not isinstance(model, GraphChain):
        return local_bound(model, x, radius, norm, rules=rules, dampings=dampings, known=known, anchored=anchored)
    if known is not None:
        raise GraphNetworkError("verifier pre-activation intervals need a chain network: they are given per layer, "
                                "and this model has residual blocks (local radii of graphs use lipcert's own intervals)")
    bound = local_bound(model.chain, x, radius, norm, rules=rules, dampings=dampings, anchored=anchored)
    recursion = graph_recursion(model.graph, slopes=model.site_slopes(bound.alphas, bound.betas), greedy=True)
    return replace(bound, grams={**bound.grams, RECURSION: Gram(recursion.extras["form"], 0.0)})


def graph_local_bound(net: Network | GraphNetwork, x: np.ndarray | torch.Tensor, radius: float, norm: str | float = 2, *,
                      rules: Sequence[Rule | str] = LOCAL_RULES, dampings: Sequence[str] = LOCAL_DAMPINGS,
                      anchored: bool = False) -> LocalBound:
    """Lipschitz bounds of a network graph (or a chain) valid on the ball of ``radius`` around ``x``; the
    parameters and the result as for :func:`~lipcert.local.bound.local_bound` (module docstring)."""
    return model_local_bound(local_model(net, "graph_local_bound"), x, radius, norm, rules=rules, dampings=dampings,
                             anchored=anchored)
