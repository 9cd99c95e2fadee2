"""Closed-form bounds: naive product, single rules (ECLipsE-Fast = SN(1)), combined and greedy.

Every function here takes the network's weights (float64 or float32 torch tensors on one
device) and per-neuron slopes, and returns the :class:`~lipcert.bounds.recursion.RecursionResult`
objects that :func:`lipcert.lipschitz` turns into a :class:`~lipcert.bounds.result.LipschitzBound`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from ..errors import InvalidParameterError
from . import abs_layer
from .eigen import ESTIMATE_DENSE_BELOW, lambda_max, top_eigenvalue
from .recursion import Candidate, LayerContext, RecursionResult, factor_certificate, run, run_passes, solve_rt
from .rules import DEFAULT_RULE_SET, Rule

Slopes = list[tuple[torch.Tensor, torch.Tensor]]


def closed_form_slopes(slopes: Slopes) -> Slopes:
    """Slopes used by the closed forms: alpha >= 0 relaxed to 0 where alpha < beta (math.md 7(ii)).

    [alpha, beta] is contained in [0, beta] for 0 <= alpha, so the relaxed certificate is valid;
    it was tighter for every closed form in math.md Table D.  Negative alpha is kept (dropping the
    alpha*beta term would be unsound), and so is alpha = beta (a fixed slope).
    """
    out = []
    for alpha, beta in slopes:
        relax = (alpha >= 0) & (alpha < beta)
        out.append((torch.where(relax, torch.zeros_like(alpha), alpha), beta))
    return out


def spectral_norm_squared(w: torch.Tensor) -> float:
    """Certified upper bound on ||W||_2^2 = lambda_max of the smaller Gram matrix."""
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return float(lambda_max((gram + gram.T) / 2))


def naive(weights: Sequence[torch.Tensor], slopes: Slopes) -> RecursionResult:
    """prod_k ||W_k||_2 * prod_k max_j max(|alpha_kj|, |beta_kj|) (math.md 4.1), as G = c^2 W_L W_L^T."""
    log_scale = 0.0
    for w, (alpha, beta) in zip(weights[:-1], slopes):
        slope = float(torch.maximum(alpha.abs(), beta.abs()).max())
        norm = math.sqrt(max(spectral_norm_squared(w), 0.0))
        if norm == 0.0 or slope == 0.0:
            k = weights[-1].shape[0]
            return RecursionResult(torch.zeros(k, k, dtype=w.dtype, device=w.device), 0.0, [], [], ["constant"])
        log_scale += 2 * (math.log(norm) + math.log(slope))
    last = weights[-1]
    return RecursionResult(last @ last.T, log_scale, [], [])


def rule_chooser(rule: Rule):
    """Chooser yielding the rule's multipliers, then its fallbacks (math.md section 5)."""

    def choose(ctx: LayerContext) -> Iterator[Candidate]:
        for r in rule.fallbacks():
            yield r.name, r(ctx.gamma, ctx.cache)
        # The rules use eigenvalue estimates; SN(1) at a certified lambda_max is always feasible.
        yield "sn(1)", torch.full_like(ctx.gamma[0], 1.0) / lambda_max(ctx.gamma)

    return choose


def single_rule(weights: Sequence[torch.Tensor], slopes: Slopes, rule: Rule) -> RecursionResult:
    """Algorithm 0 of math.md with one rule at every layer."""
    return run(list(weights), closed_form_slopes(slopes), rule_chooser(rule))


PRUNE_FROM_WIDTH = 256
"""combined prunes passes (see :func:`combined`) only on nets with a hidden layer at least this wide."""
PRUNE_FACTOR = 0.2
"""Default pruning threshold: drop a pass once its truncated bound is 1.2x the best one's (chosen on
math.md Table A/B nets of width 20-200 and depth 2-50 and the shared CNNs, where it lost nothing)."""


def combined(weights: Sequence[torch.Tensor], slopes: Slopes, rules: Sequence[Rule] = DEFAULT_RULE_SET,
             *, prune: float | Literal["auto"] | None = "auto", beam: int | None = None) -> dict[str, RecursionResult]:
    """One pass per rule, plus the naive product; the caller reports the minimum.

    Each pass is a valid certificate.  With slopes alpha beta = 0 (after the closed-form
    relaxation) the passes run together (:func:`.recursion.run_passes`: shared trajectories,
    each pass bitwise equal to running it alone).  ``prune`` (a factor, None for no pruning, or
    ``"auto"``: :data:`PRUNE_FACTOR` on nets with a hidden layer of width >= :data:`PRUNE_FROM_WIDTH`)
    drops a pass once the bound of the net cut after the current layer exceeds the best pass's
    by more than the factor 1 + prune, or once its M_k is dominated by a sibling's; SN(1)
    (ECLipsE-Fast) is never dropped, so combined stays <= ECLipsE-Fast.  ``beam`` (it turns
    pruning on) keeps at most that many trajectories besides SN(1)'s: faster, at a cost in
    tightness (benchmarks/results/pruning.md).  Pruned passes are listed in each result's
    ``extras["pruned"]``.

    The naive product keeps the combination below it also for negative slopes (SiLU, GELU),
    where no rule is guaranteed to beat it.  For slopes in [0, beta] SN(1) <= naive is a theorem
    (math.md 4.2), so on pruned (wide) nets, where its spectral norms would cost about one more
    pass, naive is left out.
    """
    relaxed = closed_form_slopes(slopes)
    wide = max(w.shape[0] for w in weights[:-1]) >= PRUNE_FROM_WIDTH if len(weights) > 1 else False
    factor = (PRUNE_FACTOR if wide or beam is not None else None) if prune == "auto" else prune
    exact = [abs_layer.needs_exact_step(a, b) for a, b in relaxed]
    if exact and all(exact):
        # every layer takes the exact step (decisions 19), which no rule changes: one pass per score
        passes = {rules[0].name: single_rule(weights, slopes, rules[0])}
    elif any(bool(((a * b) != 0).any()) for a, b in relaxed):
        passes = {rule.name: single_rule(weights, slopes, rule) for rule in rules}
    else:
        choosers = {rule.name: rule_chooser(rule) for rule in rules}
        passes = run_passes(list(weights), relaxed, choosers, prune=factor, beam=beam, keep=("sn(1)",))
        if factor is not None:
            return passes
    if any(exact):  # the exact steps ranked by trace: better through GroupSort's stages, worse through FullSort's
        passes[abs_layer.TRACE_PASS] = run(list(weights), relaxed, rule_chooser(rules[0]), abs_score="trace")
    passes["naive"] = naive(weights, slopes)
    return passes


def greedy_chooser(rules: Sequence[Rule]):
    """Per layer, the feasible candidate minimizing lambda_max(N M_k^{-1} N^T) for the next matrix N.

    The scores only rank the candidates, so they are Lanczos estimates on Y^T Y with
    Y = R^{-T} N^T, never forming the product.
    """
    def choose(ctx: LayerContext) -> Iterator[Candidate]:
        scored = []
        for rule in rules:
            lam = rule(ctx.gamma, ctx.cache)
            found = factor_certificate(ctx.gamma, lam)
            if found is None:
                continue
            y = solve_rt(found[1], ctx.next_weight.T)
            m = y.shape[1]
            dense = y.T @ y if m < ESTIMATE_DENSE_BELOW else None
            score = top_eigenvalue(lambda v: y.T @ (y @ v), m, dtype=y.dtype, device=y.device, dense=dense)
            scored.append((score, rule.name, lam))
        scored.sort(key=lambda t: t[0])
        for _, name, lam in scored:
            yield name, lam
        yield from rule_chooser(Rule("sn", 1.0))(ctx)

    return choose


def greedy(weights: Sequence[torch.Tensor], slopes: Slopes,
           rules: Sequence[Rule] = DEFAULT_RULE_SET) -> RecursionResult:
    """Greedy per-layer mix of rules (math.md 4.3, 'further valid combinations')."""
    return run(list(weights), closed_form_slopes(slopes), greedy_chooser(rules))
