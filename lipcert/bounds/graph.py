"""Lipschitz bounds of network graphs: chain bounds composed across stages and residual blocks.

For f = s_T o a_{T-1} o ... o a_1 o s_1 (lipcert/graph.py), Lip(f) <= Lip(s_T) prod_{t<T} Lip(s_t) max|a_t'|,
with Lip(s_t) a chain bound for a chain stage and :func:`block_lipschitz` for a residual block
y = S x + c + g(x): Lip <= ||S||_2 + Lip(g) (triangle inequality; never a product that drops the skip), or,
for a branch g = G sigma(W x + b) + c' of one hidden layer, the block LMI certificate of
:mod:`.residual_block` (docs/decisions.md 30) when it is lower.
Margin bounds come from the last stage's certificates: for an output direction c,
Lip(c^T f) <= Lip(c^T s_T) R with R the product over the earlier stages, and through a last residual
block Lip(c^T s_T) <= ||S^T c|| + Lip(c^T g) <= sqrt(c^T ((1 + t) S S^T + (1 + 1/t) G_g) c) for any t > 0
(Young's inequality), t = Lip(g) / ||S|| making the value ||S|| + Lip(g) again, or the block
certificate's form E (Lip(c^T s_T) <= sqrt(c^T E c)) when the certificate is lower.  An L2-norm
pooling stage enters with its exact constant (:meth:`~lipcert.norm_pool.NormPool.certified_constant`,
decisions 43): it is not slope-restricted, so no chain bound passes through it and the graph's bound is
the product of the pieces on either side times that constant.  An L2-norm residual
sqrt(x^2/2 + g(x)^2/2 + eps) enters with sqrt((1 + Lip(g)^2) / 2), Lip(g) the method's bound on its branch
(decisions 44).  ``combined`` and
``optimized`` also run the carried-form recursion through the whole graph (:mod:`.graph_blocks`,
decisions 31) and keep the lesser.  Every bound is a
:class:`~lipcert.bounds.result.LipschitzBound` whose Gram matrices give ``pairwise()`` and ``along(c)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..graph import GraphNetwork, Residual
from ..network import Network
from ..norm_pool import NormPool
from ..norm_residual import NormResidual, norm_residual_squared
from ..rounding import certified_root
from . import conv_block
from .closed_form import spectral_norm_squared
from .conv_norm import conv_norm
from .graph_blocks import graph_recursion
from .residual_block import METHODS as BLOCK_METHODS
from .residual_block import BlockBound as BlockCertificate
from .residual_block import block_constant
from .result import Gram, LipschitzBound
from .rules import DEFAULT_RULE_SET, Rule, parse_rule
from .threads import small_matrix_threads

ChainBound = Callable[[Network, bool], LipschitzBound]
"""``chain_bound(chain, last)``: the method's bound on one chain; ``last`` says whether the chain's
outputs are the network's outputs (margin options such as a direction apply to it only)."""


@dataclass(frozen=True)
class BlockBound:
    """The bound of one residual block y = S x + c + g(x).

    ``value`` >= Lip(block): the lesser of ||S||_2 + Lip(g) and, for a one-hidden-layer branch, the
    block LMI certificate (``certificate``, :mod:`.residual_block`); ``shortcut`` is the certified
    ||S||_2, ``branch`` the chain bound on g.
    """

    value: float
    shortcut: float
    branch: LipschitzBound
    certificate: BlockCertificate | None = None
    per_frequency: str | None = None
    """The rule of the block certificate per frequency (:mod:`.conv_block`) when that gave ``value``."""


def shortcut_norm(block: Residual) -> float:
    """Certified ||S||_2 of a block's shortcut: 1 for the identity, sqrt of a certified lambda_max for a
    matrix, :func:`~.conv_norm.conv_norm` for a convolution operator (no dense matrix)."""
    if block.shortcut is None:
        return 1.0
    if not isinstance(block.shortcut, torch.Tensor):
        return conv_norm(block.shortcut).value
    return float(certified_root(max(spectral_norm_squared(block.shortcut), 0.0), 0.0))


def disjoint_outputs(block: Residual) -> bool:
    """True when S x + c and g(x) write disjoint entries of the output (a concatenation [S x + c; g(x)] up to
    the order of entries, adapters/residual.py): then ||S u + g(x) - g(y)||^2 = ||S u||^2 + ||g(x) - g(y)||^2
    for u = x - y, and Lip <= sqrt(||S||^2 + Lip(g)^2) (docs/decisions.md 47)."""
    g = block.branch
    if not isinstance(block.shortcut, torch.Tensor) or g.has_operators:  # the identity, or a convolution
        return False
    return not bool(((block.shortcut != 0).any(1) & (g.weights[-1] != 0).any(1)).any())


def block_method(method: str, branch: LipschitzBound) -> str | None:
    """The residual-block method that matches a graph ``method`` (None: no block certificate).

    ECLipsE-Fast is the SN(1) rule, a single rule is itself, ``optimized`` and the SDP methods use
    the block's L-BFGS refinement, every other method the minimum over the block's closed forms.
    """
    if method == "naive":
        return None
    if method == "eclipse-fast":
        return "sn(1)"
    if method in ("sn", "gc", "shift", "gcs"):
        return branch.rule if branch.rule in BLOCK_METHODS else None
    return "optimized" if method in ("optimized", "lipsdp-neuron", "lipsdp-layer") else "combined"


def block_certificate(block: Residual, method: str | None) -> BlockCertificate | None:
    """The block LMI certificate of a block whose branch is G sigma(W x + b) + c (one hidden layer, dense)."""
    g = block.branch
    if method is None or g.depth != 2 or g.has_operators or not isinstance(block.shortcut, torch.Tensor | None):
        return None
    alpha, beta = g.slopes()[0]
    return block_constant(block.shortcut, g.weights[0], g.weights[1], alpha, beta, method=method)


def block_lipschitz(block: Residual, chain_bound: ChainBound, last: bool = False,
                    method: str = "naive") -> BlockBound:
    """Bound on the L2 Lipschitz constant of a residual block: min(||S||_2 + Lip(g), block certificate), with
    sqrt(||S||_2^2 + Lip(g)^2) in place of the sum when S and g write disjoint entries (:func:`disjoint_outputs`).

    The one place where a block's constant is composed.  ``last`` is passed on to ``chain_bound``;
    ``method`` is the graph's method (:func:`block_method` maps it to the block's).
    """
    s = shortcut_norm(block)
    branch = chain_bound(block.branch, last)
    value = float(math.hypot(s, branch.value) * (1 + 1e-15) if disjoint_outputs(block) else
                  (s + branch.value) * (1 + 4e-16))
    rule = block_method(method, branch)
    certificate = block_certificate(block, rule)
    if certificate is not None and certificate.value < value:
        return BlockBound(certificate.value, s, branch, certificate)
    found = None if rule is None else conv_block.block_rho(block, _frequency_rules(rule))
    if found is not None and found[0] < value:  # decisions 52
        return BlockBound(found[0], s, branch, per_frequency=found[1])
    return BlockBound(value, s, branch)


def pool_bound(pool: NormPool, method: str) -> LipschitzBound:
    """The bound of an L2-norm pooling stage: its exact constant c (certified), margins from c^2 I."""
    start = time.perf_counter()
    q = pool.squared_upper()
    gram = Gram(torch.eye(pool.output_dim, dtype=torch.float64), math.log(q) if q > 0 else -math.inf)
    value = gram.value
    return LipschitzBound(value=value, method=method, per_rule={"l2pool": value}, rule="l2pool", multipliers=(),
                          slopes=(), seconds=time.perf_counter() - start, grams={method: gram},
                          extras={"path": "l2pool", "exact": pool.constant()})


def norm_residual_bound(stage: NormResidual, chain_bound: ChainBound, method: str) -> LipschitzBound:
    """The bound of an L2-norm residual: sqrt((1 + L^2) / 2), L the method's bound on the branch; margins from
    that value squared times I (the branch's margins do not pass the root)."""
    branch = chain_bound(stage.branch, False)
    gram = Gram(torch.eye(stage.output_dim, dtype=torch.float64), math.log(norm_residual_squared(branch.value)))
    value = gram.value
    return replace(branch, value=value, per_rule={"l2residual": value}, rule="l2residual", multipliers=(), slopes=(),
                   grams={method: gram}, extras={"path": "l2residual", "branch": branch.value})


def _frequency_rules(rule: str) -> tuple[Rule, ...]:
    """The closed-form rules a block method runs per frequency: all of them for combined and optimized."""
    return DEFAULT_RULE_SET if rule in ("combined", "optimized") else (parse_rule(rule),)


def recursion_method(method: str) -> str | None:
    """The carried-form recursion's method for a graph ``method``: taken beside the stagewise composition by
    ``combined`` and ``greedy`` (as "combined") and by ``optimized`` and the SDP methods (as "optimized");
    single rules and naive stay stagewise, so that they remain the rule they name."""
    if method in ("combined", "greedy", "eclipse"):
        return "combined"
    return "optimized" if method in ("optimized", "lipsdp-neuron", "lipsdp-layer") else None


def _slope(net: GraphNetwork, t: int) -> float:
    """max |slope| of the activation after stage t (1 when there is none)."""
    slopes = net.between_slopes(t)
    return 1.0 if slopes is None else float(torch.maximum(slopes[0].abs(), slopes[1].abs()).max())


def _residual_gram(block: Residual, shortcut: float, gram: Gram) -> Gram:
    """Gram matrix (1 + t) S S^T + (1 + 1/t) G_g of a last residual block, valid for every t > 0 (Young's
    inequality); t = Lip(g) / ||S|| gives the value ||S|| + Lip(g), and when S and g write disjoint entries the
    form is block-diagonal and t = (Lip(g) / ||S||)^2 gives sqrt(||S||^2 + Lip(g)^2)."""
    s_mat = block.shortcut_matrix()
    lip_g = gram.value
    if lip_g == 0.0:
        return Gram(s_mat @ s_mat.T, 0.0)
    ratio = (lip_g / shortcut) ** 2 if disjoint_outputs(block) else lip_g / shortcut
    g = gram.matrix.detach().cpu().double()
    if g.shape[0] != s_mat.shape[0]:  # a 1 x 1 Gram of a branch ending in a convolution: [[m]] stands for m I
        g = g[0, 0] * torch.eye(s_mat.shape[0], dtype=torch.float64)
    matrix = (1 + ratio) * (s_mat @ s_mat.T) * math.exp(-gram.log_scale) + (1 + 1 / ratio) * g
    return Gram(matrix, gram.log_scale)


def graph_lipschitz(net: GraphNetwork, chain_bound: ChainBound, method: str) -> LipschitzBound:
    """Bound on Lip_2 of a graph by ``method`` (its bound on every chain, composed as in the module docstring).

    ``extras["stages"]`` lists each stage's kind and bound (and for a block ||S|| and Lip(g)),
    ``extras["between_slopes"]`` the max |slope| of the activations between stages.  Runs with one torch
    thread when every matrix is small (:mod:`.threads`).
    """
    with small_matrix_threads(max((max(c.widths) for c in net.chains()), default=1)):
        return _graph_lipschitz(net, chain_bound, method)


def _graph_lipschitz(net: GraphNetwork, chain_bound: ChainBound, method: str) -> LipschitzBound:
    start = time.perf_counter()
    log_rest, stages, notes, skipped = 0.0, [], [], []
    last_t = len(net.stages) - 1
    last: LipschitzBound | BlockBound | None = None
    for t, stage in enumerate(net.stages):
        bound: LipschitzBound | BlockBound
        if isinstance(stage, Network):
            bound = chain = chain_bound(stage, t == last_t)
            stages.append({"kind": "chain", "widths": list(stage.widths), "value": bound.value,
                           "path": _chain_path(bound)})
        elif isinstance(stage, NormPool):
            bound = chain = pool_bound(stage, method)
            stages.append({"kind": "l2pool", "label": stage.label, "value": bound.value})
        elif isinstance(stage, NormResidual):
            bound = chain = norm_residual_bound(stage, chain_bound, method)
            stages.append({"kind": "l2residual", "branch": bound.extras["branch"], "value": bound.value})
        else:
            bound = block_lipschitz(stage, chain_bound, t == last_t, method)
            chain = bound.branch
            per_frequency = None if bound.per_frequency is None else f"{bound.per_frequency} per frequency"
            stages.append({"kind": "residual", "shortcut": _shortcut_kind(stage),
                           "shortcut_norm": bound.shortcut, "branch": bound.branch.value, "value": bound.value,
                           "certificate": bound.certificate.rule if bound.certificate is not None else per_frequency,
                           "path": _chain_path(bound.branch)})
            if (_operator_block(stage) and stage.branch.depth == 2 and block_method(method, chain) is not None
                    and not conv_block.applies(stage)):
                skipped.append(f"stage {t + 1}: block certificate (convolutions kept as operators)")
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
        if last.certificate is not None:  # Lip(c^T h) <= sqrt(c^T E c), E the block's form
            grams = {method: Gram(last.certificate.extras["form"], 0.0)}
        elif last.per_frequency is not None:  # rho per frequency: Lip(c^T h) <= rho ||c||
            grams = {method: Gram(torch.eye(net.output_dim, dtype=torch.float64), 2 * math.log(last.value))}
        else:
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
    recursion = recursion_method(method)
    if recursion is not None and net.has_operators:
        skipped.append("the carried-form recursion through the graph (convolutions kept as operators)")
    elif recursion is not None:  # the carried-form recursion through the whole graph (decisions 31)
        carried = graph_recursion(net, method=recursion)
        grams[f"recursion ({recursion})"] = Gram(carried.extras["form"], 0.0)
    values = {name: g.value for name, g in grams.items()}
    best = min(values, key=values.__getitem__)
    return LipschitzBound(
        value=values[best], method=method, per_rule=values, rule=best, multipliers=(), slopes=(),
        seconds=time.perf_counter() - start, status="ok" if not notes else "; ".join(notes), grams=grams,
        extras={"path": "graph", "stages": stages,
                "between_slopes": [_slope(net, t) for t in range(len(net.activations))],
                **({"skipped": skipped} if skipped else {})})


def _chain_path(bound: LipschitzBound) -> str:
    """How a chain was bounded: "dense", or the operator path :func:`~.workspace.choose_path` took."""
    return str(bound.extras.get("path", "dense"))


def _shortcut_kind(block: Residual) -> str:
    if block.shortcut is None:
        return "identity"
    return "linear" if isinstance(block.shortcut, torch.Tensor) else "conv"


def _operator_block(block: Residual) -> bool:
    """True if the block keeps a convolution as an operator (branch or shortcut)."""
    return block.branch.has_operators or _shortcut_kind(block) == "conv"
