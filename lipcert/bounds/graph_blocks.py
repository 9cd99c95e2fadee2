"""A network graph as a chain of residual blocks, bounded by the carried-form recursion (decisions 31).

Every stage of a :class:`~lipcert.graph.GraphNetwork` becomes blocks h(x) = S x + G sigma(W x) of
:mod:`.residual_block`, and linear maps between them are multiplied into the next block (biases do
not enter: every bound holds for all of them):

* a chain W_L phi(... phi(W_1 x)): the blocks (0, W_k, I) for its hidden layers, then W_L pending;
* a residual block S x + g(x): (S, W_1, W_2) when g has one hidden layer, :func:`.residual_block.branch_chain`
  when it has more, S + W_1 pending when g is affine;
* an activation between stages: the block (0, I, I) with its slopes.

The map still pending at the end is the head.  :func:`.graph.graph_lipschitz` takes it beside its
stagewise composition for ``combined`` and ``optimized``.

An L2-norm pooling stage (:class:`~lipcert.norm_pool.NormPool`) is not slope-restricted, so no form
passes through it: the graph is cut there into segments, each bounded by the recursion, and the
carried form after the pooling is c^2 lambda_max(N E N^T) I (c the pooling's exact constant, N E N^T the
form of the segment before it): ||Delta pool|| <= c ||Delta h|| (decisions 43).  An L2-norm residual
(decisions 44) is cut the same way, with c = sqrt((1 + L^2) / 2), L the recursion's bound on its branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import GraphNetworkError, ShapeMismatchError
from ..graph import GraphNetwork, Residual
from ..network import Network
from ..norm_pool import NormPool
from ..norm_residual import NormResidual, norm_residual_constant
from ..rounding import certified_root
from .closed_form import spectral_norm_squared
from .residual_block import BlockBound, ResidualBlock, branch_chain, chain_constant
from .threads import small_matrix_threads


Slopes = Sequence[tuple[torch.Tensor, torch.Tensor]]
"""Per activation site of a graph (in evaluation order, as :data:`lipcert.graph.Hook` counts them), the
per-neuron (alpha, beta) to use instead of the network's own (e.g. slopes restricted to a ball)."""


def graph_blocks(net: GraphNetwork, slopes: Slopes | None = None) -> tuple[list[ResidualBlock], torch.Tensor]:
    """The blocks and the head of ``net`` (whose layers are dense and which has no cut stage), as the module
    docstring says, with the network's slopes or, given ``slopes``, those."""
    (blocks, head), = graph_segments(net, slopes)
    return blocks, head


def graph_segments(net: GraphNetwork, slopes: Slopes | None = None) -> list[tuple[list[ResidualBlock], torch.Tensor]]:
    """The blocks and head of every segment of ``net`` between its cut stages (poolings, L2-norm residuals;
    one more segment than cuts).  ``slopes`` (:data:`Slopes`) replace the network's own; they are taken
    on graphs without cuts only."""
    if slopes is not None and net.cuts():
        raise GraphNetworkError("restricted slopes (local bounds) need a graph without L2-norm pooling or "
                                "L2-norm residual stages")
    own = _site_slopes(net)
    given = own if slopes is None else list(slopes)
    if len(given) != len(own) or any(a.shape != o[0].shape or b.shape != o[1].shape for (a, b), o in zip(given, own)):
        raise ShapeMismatchError(f"slopes must be one (alpha, beta) pair per activation site of the graph "
                                 f"({len(own)}), each with one entry per neuron")
    sites = iter(given)
    segments: list[tuple[list[ResidualBlock], torch.Tensor]] = []
    blocks: list[ResidualBlock] = []
    pending: torch.Tensor | None = None  # linear map waiting for the next block (None: the identity)
    for t, stage in enumerate(net.stages):
        if isinstance(stage, NormPool | NormResidual):
            segments.append((blocks, torch.eye(stage.input_dim, dtype=torch.float64) if pending is None else pending))
            blocks, pending = [], None
        elif isinstance(stage, Network):
            for w, (alpha, beta) in zip(stage.weights[:-1], sites):
                blocks.append(_merged(ResidualBlock(torch.zeros(w.shape[0], w.shape[1], dtype=torch.float64), w,
                                                    torch.eye(w.shape[0], dtype=torch.float64), alpha, beta), pending))
                pending = None
            pending = _then(stage.weights[-1], pending)
        else:
            pending = _residual(stage, blocks, pending, [next(sites) for _ in stage.branch.activations])
        if t < len(net.activations) and net.activations[t] is not None:
            eye = torch.eye(stage.output_dim, dtype=torch.float64)
            zero = torch.zeros(stage.output_dim, stage.output_dim, dtype=torch.float64)
            blocks.append(_merged(ResidualBlock(zero, eye, eye, *next(sites)), pending))
            pending = None
    head = torch.eye(net.output_dim, dtype=torch.float64) if pending is None else pending
    return segments + [(blocks, head)]


def _site_slopes(net: GraphNetwork) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The network's own per-neuron slopes of every activation site, in evaluation order."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t, stage in enumerate(net.stages):  # a cut stage's branch is bounded on its own (_cut_constant)
        if isinstance(stage, Network | Residual):
            out += (stage if isinstance(stage, Network) else stage.branch).slopes()
        between = net.between_slopes(t) if t < len(net.activations) else None
        out += [] if between is None else [between]
    return out


def _merged(block: ResidualBlock, pending: torch.Tensor | None) -> ResidualBlock:
    """``block`` after the linear map ``pending`` (S P, W P, G), or itself when nothing is pending."""
    if pending is None:
        return block
    s = pending if block.shortcut is None else block.shortcut @ pending
    return ResidualBlock(s, block.inner @ pending, block.outer, block.alpha, block.beta)


def _then(linear: torch.Tensor, pending: torch.Tensor | None) -> torch.Tensor:
    """``linear`` after ``pending``."""
    return linear if pending is None else linear @ pending


def _residual(stage: Residual, blocks: list[ResidualBlock], pending: torch.Tensor | None,
              slopes: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """Append the blocks of one residual stage (after ``pending``), its branch's hidden layers with ``slopes``;
    returns the linear map pending after it."""
    ws = list(stage.branch.weights)
    s = stage.shortcut_matrix()
    if len(ws) == 1:
        return _then(s + ws[0], pending)
    if len(ws) == 2:
        blocks.append(_merged(ResidualBlock(s, ws[0], ws[1], *slopes[0]), pending))
        return None
    inner, head = branch_chain(s, ws, [a for a, _ in slopes], [b for _, b in slopes])
    blocks.append(_merged(inner[0], pending))
    blocks.extend(inner[1:])
    return head


def graph_recursion(net: GraphNetwork, *, method: str = "combined", slopes: Slopes | None = None,
                    greedy: bool = False) -> BlockBound:
    """Certified bound on Lip_2 of a network graph: :func:`.residual_block.chain_constant` on its blocks.

    ``pairwise()`` of the result gives the margin constants of the graph's outputs.  With ``slopes`` (one
    pair per activation site, see :data:`Slopes`) the bound holds for every pair of inputs whose
    pre-activations have their secant slopes in them (local bounds, decisions 45); ``greedy`` is passed to
    :func:`.residual_block.chain_constant`.  Runs with one torch
    thread when every matrix is small (:mod:`.threads`).
    """
    with small_matrix_threads(max((max(c.widths) for c in net.chains()), default=1)):
        return _graph_recursion(net, method, slopes, greedy)


def _graph_recursion(net: GraphNetwork, method: str, slopes: Slopes | None, greedy: bool) -> BlockBound:
    """The recursion on every segment; a cut multiplies the carried scale by its constant (module docstring)."""
    scale = 1.0  # bound on ||Delta (input of the current segment)|| / ||Delta x||
    cuts = net.cuts()
    segments = graph_segments(net, slopes)
    for k, (blocks, head) in enumerate(segments):
        bound = _segment(blocks, head, method, greedy)
        if k == len(segments) - 1:
            if k == 0:
                return bound
            form = bound.extras["form"] * scale**2
            value = float(bound.value * scale * (1 + 4e-16))
            return BlockBound(value, method, f"{bound.rule} after {k} cut(s)", {"segments": value},
                              bound.multipliers, bound.seconds, {**bound.extras, "form": form})
        scale = float(scale * bound.value * _cut_constant(cuts[k], method) * (1 + 4e-16))
    raise AssertionError("graph_segments returns at least one segment")  # pragma: no cover


def _cut_constant(stage: NormPool | NormResidual, method: str) -> float:
    """A pooling's exact constant; sqrt((1 + L^2) / 2) for an L2-norm residual, L the recursion on its branch."""
    if isinstance(stage, NormPool):
        return stage.certified_constant()
    n = stage.input_dim
    (blocks, head), = graph_segments(GraphNetwork((stage.branch,), (), (n,)))
    return norm_residual_constant(_segment(blocks, head, method).value)


def _segment(blocks: list[ResidualBlock], head: torch.Tensor, method: str, greedy: bool = False) -> BlockBound:
    """chain_constant of one segment; a segment without blocks is its linear head."""
    if not blocks:
        value = float(certified_root(spectral_norm_squared(head), 0.0))
        form = head @ head.T
        return BlockBound(value, method, "linear", {"linear": value}, None, 0.0, {"form": (form + form.T) / 2})
    return chain_constant(blocks, head, method=method, greedy=greedy)
