"""A network graph as one chain: the shortcut carried beside the branch by identity neurons (decisions 45).

A residual block y = S h + c + W_L phi(... phi(W_1 h + b_1) ...) + b_L is the chain on the state (S h + c, branch)

    layer 1:  [S; W_1] h + [c; b_1],          identity on the first n_out neurons, phi_1 on the others
    layer k:  diag(I, W_k) u + [0; b_k],      identity, phi_k                          (k = 2..L-1)
    then:     [I, W_L] u + b_L                (the next layer's input)

(the state of :func:`lipcert.bounds.residual_block.branch_chain`, with biases).  Chain stages keep their layers;
an activation between stages is a layer of its own; the affine map that ends a stage becomes a layer with the
identity activation when another affine map follows it, so no two maps are ever multiplied: the chain is the
graph's function in exact arithmetic (in float64 the two differ by the order of a few sums).  Every chain tool
applies to it; :func:`graph_chain` also says which graph activation site each hidden layer's neurons are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Activation, get_activation, on_neurons
from .errors import GraphNetworkError
from .graph import GraphNetwork, Residual
from .network import Network


@dataclass(frozen=True, eq=False)
class GraphChain:
    """A :class:`~lipcert.graph.GraphNetwork` and the chain that computes it.

    Attributes
    ----------
    graph : GraphNetwork
    chain : Network
        The chain (not normalized: identity layers are kept, see the module docstring).
    sites : tuple of (int, int) or None
        Per hidden layer of ``chain``: (activation site of the graph in evaluation order, offset of its first
        neuron in the layer), or None for a layer of identity neurons only.
    """

    graph: GraphNetwork
    chain: Network
    sites: tuple[tuple[int, int] | None, ...]

    def site_slopes(self, alphas: tuple[torch.Tensor, ...], betas: tuple[torch.Tensor, ...]
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per activation site of the graph, the slopes of its neurons read from per-layer slopes of the chain."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for site, (alpha, beta) in zip(self.sites, zip(alphas, betas)):
            if site is not None:
                assert site[0] == len(out)
                out.append((alpha[site[1]:], beta[site[1]:]))
        return out


class _Layers:
    """The chain's layers as they are appended, and the affine map still pending (None: the identity)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.acts: list[Activation] = []
        self.sites: list[tuple[int, int] | None] = []
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.site = 0

    def add(self, w: torch.Tensor, b: torch.Tensor, act: Activation, offset: int | None) -> None:
        """A hidden layer act(w u + b) after the pending map (flushed first as an identity layer)."""
        self.flush()
        self.weights.append(w)
        self.biases.append(b)
        self.acts.append(act)
        self.sites.append(None if offset is None else (self.site, offset))
        self.site += offset is not None

    def flush(self) -> None:
        if self.pending is not None:
            w, b = self.pending
            self.pending = None
            self.add(w, b, get_activation("identity"), None)

    def then(self, w: torch.Tensor, b: torch.Tensor) -> None:
        """An affine map after the current state (after the pending one, which is flushed)."""
        self.flush()
        self.pending = (w, b)


def graph_chain(net: GraphNetwork) -> GraphChain:
    """The chain that computes ``net`` (module docstring); operator layers of branches are densified."""
    out = _Layers()
    for t, stage in enumerate(net.stages):
        if isinstance(stage, Residual):
            _residual(out, stage)
        elif not isinstance(stage, Network):
            raise GraphNetworkError(f"local radii need slope-restricted stages, but stage {t + 1} of this graph is "
                                    f"a {type(stage).__name__} (L2-norm pooling / residual; docs/decisions.md "
                                    "43-45): it has no chain form; use global radii")
        else:
            chain = stage.densified()
            for w, b, inner in zip(chain.weights, chain.biases, chain.activations):
                out.add(w, b, inner, 0)
            out.then(chain.weights[-1], chain.biases[-1])
        between = net.activations[t] if t < len(net.activations) else None
        if between is not None:
            assert out.pending is not None  # every stage ends with an affine map
            w, b = out.pending
            out.pending = None
            out.add(w, b, between, 0)
    if out.pending is None:  # cannot happen: the last stage ends with its affine map
        raise AssertionError("a graph ends with an affine map")
    weights, biases = out.weights + [out.pending[0]], out.biases + [out.pending[1]]
    slopes = [a.neuron_slopes(w.shape[0]) for w, a in zip(weights, out.acts)]
    chain = Network(tuple(weights), tuple(biases), tuple(out.acts), tuple(s[0] for s in slopes),
                    tuple(s[1] for s in slopes), net.input_shape, net.input_range, {"graph_chain": True})
    return GraphChain(net, chain, tuple(out.sites))


def _residual(out: _Layers, stage: Residual) -> None:
    """The layers of one residual block (module docstring); its branch has at least one hidden layer."""
    g = stage.branch.densified()
    n = g.output_dim
    s = stage.shortcut_matrix()
    c = torch.zeros(n, dtype=torch.float64) if stage.shortcut_bias is None else stage.shortcut_bias
    carry = [False] * n
    eye = torch.eye(n, dtype=torch.float64)
    if g.depth == 1:  # a linear residual that was not merged: [S; W] h + [c; b], then [I, I]
        out.then(torch.cat([s, g.weights[0]]), torch.cat([c, g.biases[0]]))
        out.then(torch.cat([eye, eye], 1), torch.zeros(n, dtype=torch.float64))
        return
    for k, (w, b, act) in enumerate(zip(g.weights, g.biases, g.activations)):
        if k == 0:
            weight, bias = torch.cat([s, w]), torch.cat([c, b])
        else:
            weight = torch.block_diag(eye, w)
            bias = torch.cat([torch.zeros(n, dtype=torch.float64), b])
        out.add(weight, bias, on_neurons(act, carry + [True] * w.shape[0]), n)
    out.then(torch.cat([eye, g.weights[-1]], 1), g.biases[-1])
