"""Lipschitz bounds of network graphs: chain bounds composed across stages and residual blocks.

For f = s_T o a_{T-1} o ... o a_1 o s_1 (lipcert/graph.py), Lip(f) <= Lip(s_T) prod_{t<T} Lip(s_t) max|a_t'|,
with Lip(s_t) a chain bound for a chain stage and :func:`block_lipschitz` for a residual block
y = S x + c + g(x): Lip <= ||S||_2 + Lip(g) (triangle inequality; never a product that drops the skip).
Margin bounds come from the last stage's certificates: for an output direction c,
Lip(c^T f) <= Lip(c^T s_T) R with R the product over the earlier stages, and through a last residual
block Lip(c^T s_T) <= ||S^T c|| + Lip(c^T g) <= sqrt(c^T ((1 + t) S S^T + (1 + 1/t) G_g) c) for any t > 0
(Young's inequality), t = Lip(g) / ||S|| making the value ||S|| + Lip(g) again.  Every bound is a
:class:`~lipcert.bounds.result.LipschitzBound` whose Gram matrices give ``pairwise()`` and ``along(c)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..graph import GraphNetwork, Residual
from ..network import Network
from ..rounding import certified_root
from .closed_form import spectral_norm_squared
from .result import Gram, LipschitzBound

ChainBound = Callable[[Network, bool], LipschitzBound]
"""``chain_bound(chain, last)``: the method's bound on one chain; ``last`` says whether the chain's
outputs are the network's outputs (margin options such as a direction apply to it only)."""


@dataclass(frozen=True)
class BlockBound:
    """The bound of one residual block y = S x + c + g(x).

    ``value`` >= Lip(block); ``shortcut`` is the certified ||S||_2, ``branch`` the chain bound on g.
    """

    value: float
    shortcut: float
    branch: LipschitzBound


def shortcut_norm(block: Residual) -> float:
    """Certified ||S||_2 of a block's shortcut: 1 for the identity, else sqrt of a certified lambda_max."""
    if block.shortcut is None:
        return 1.0
    return float(certified_root(max(spectral_norm_squared(block.shortcut), 0.0), 0.0))


def block_lipschitz(block: Residual, chain_bound: ChainBound, last: bool = False) -> BlockBound:
    """Bound on the L2 Lipschitz constant of a residual block: ||S||_2 + Lip(g).

    The one place where a block's constant is composed (a LipSDP-type certificate of the whole block
    would be taken here as the minimum with this value).  ``last`` is passed on to ``chain_bound``.
    """
    s = shortcut_norm(block)
    branch = chain_bound(block.branch, last)
    return BlockBound(float((s + branch.value) * (1 + 4e-16)), s, branch)


def _slope(net: GraphNetwork, t: int) -> float:
    """max |slope| of the activation after stage t (1 when there is none)."""
    slopes = net.between_slopes(t)
    return 1.0 if slopes is None else float(torch.maximum(slopes[0].abs(), slopes[1].abs()).max())


def _residual_gram(block: Residual, shortcut: float, gram: Gram) -> Gram:
    """Gram matrix (1 + t) S S^T + (1 + 1/t) G_g, t = Lip(g) / ||S||, of a last residual block."""
    s_mat = block.shortcut_matrix()
    lip_g = gram.value
    if lip_g == 0.0:
        return Gram(s_mat @ s_mat.T, 0.0)
    ratio = lip_g / shortcut
    g = gram.matrix.detach().cpu().double()
    matrix = (1 + ratio) * (s_mat @ s_mat.T) * math.exp(-gram.log_scale) + (1 + 1 / ratio) * g
    return Gram(matrix, gram.log_scale)


def graph_lipschitz(net: GraphNetwork, chain_bound: ChainBound, method: str) -> LipschitzBound:
    """Bound on Lip_2 of a graph by ``method`` (its bound on every chain, composed as in the module docstring).

    ``extras["stages"]`` lists each stage's kind and bound (and for a block ||S|| and Lip(g)),
    ``extras["between_slopes"]`` the max |slope| of the activations between stages.
    """
    start = time.perf_counter()
    log_rest, stages, notes = 0.0, [], []
    last_t = len(net.stages) - 1
    last: LipschitzBound | BlockBound | None = None
    for t, stage in enumerate(net.stages):
        bound: LipschitzBound | BlockBound
        if isinstance(stage, Network):
            bound = chain = chain_bound(stage, t == last_t)
            stages.append({"kind": "chain", "widths": list(stage.widths), "value": bound.value})
        else:
            bound = block_lipschitz(stage, chain_bound, t == last_t)
            chain = bound.branch
            stages.append({"kind": "residual", "shortcut": "identity" if stage.shortcut is None else "linear",
                           "shortcut_norm": bound.shortcut, "branch": bound.branch.value, "value": bound.value})
        if chain.status != "ok":
            notes.append(f"stage {t + 1}: {chain.status}")
        if t == last_t:
            last = bound
        elif bound.value == 0.0 or _slope(net, t) == 0.0:
            log_rest = -math.inf
        else:
            log_rest += 2 * (math.log(bound.value) + math.log(_slope(net, t)))
    assert last is not None
    if isinstance(last, BlockBound):
        block = net.stages[-1]
        assert isinstance(block, Residual)
        grams = {k: _residual_gram(block, last.shortcut, g) for k, g in last.branch.grams.items()}
        if not grams:  # a method without margin bounds: the block's value alone
            k = net.output_dim
            grams = {method: Gram(torch.eye(k, dtype=torch.float64), 2 * math.log(last.value))}
    else:
        grams = dict(last.grams) or {method: Gram(torch.eye(net.output_dim, dtype=torch.float64),
                                                  2 * math.log(max(last.value, 1e-300)))}
    k = net.output_dim
    if log_rest == -math.inf:
        grams = {name: Gram(torch.zeros(k, k, dtype=torch.float64), 0.0) for name in grams}
    else:
        grams = {name: Gram(g.matrix.detach().cpu().double(), g.log_scale + log_rest) for name, g in grams.items()}
    values = {name: g.value for name, g in grams.items()}
    best = min(values, key=values.__getitem__)
    return LipschitzBound(
        value=values[best], method=method, per_rule=values, rule=best, multipliers=(), slopes=(),
        seconds=time.perf_counter() - start, status="ok" if not notes else "; ".join(notes), grams=grams,
        extras={"path": "graph", "stages": stages,
                "between_slopes": [_slope(net, t) for t in range(len(net.activations))]})
