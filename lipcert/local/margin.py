"""Optimized local margins: multipliers optimized for one output direction on a ball.

Any positive multipliers that pass the Cholesky test give a valid factor in the recursion of
:mod:`lipcert.local.bound`, so for one margin direction c the bound ||F^T W_L^T c|| on a ball can be
lowered by optimizing log lambda through the factored recursion with the ball's slopes fixed
(:func:`optimized_margin`: L-BFGS with the barrier continuation of
:func:`lipcert.bounds.lbfgs.minimize`, every iterate a certificate).  The pre-activation
intervals, which these multipliers do not touch, often limit a radius more than the margin
constant does (docs/decisions.md item 10).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from ..bounds.lbfgs import Point, minimize
from ..bounds.optimize import offered
from ..bounds.recursion import LayerContext
from ..bounds.result import Gram
from ..errors import InfeasibleCertificateError, ShapeMismatchError
from ..network import Network
from .bound import LocalBound, Offer, Pass, next_passes, output_factor

DEFAULT_ITERATIONS = 10
"""L-BFGS iterations of :func:`optimized_margin` per failing margin in :func:`lipcert.local.radius.local_radius`."""


class _MarginProblem:
    """theta -> log of the bound on Lip(c^T f) on the ball of a :class:`LocalBound`, through the factored
    recursion with its slopes and multipliers exp(theta) (true units) on the free neurons of each layer."""

    def __init__(self, net: Network, bound: LocalBound, c: torch.Tensor, layers: list[int], sizes: list[int]) -> None:
        self.net, self.bound, self.c = net, bound, c
        self.layers, self.sizes = layers, sizes
        self.mu = 0.0

    def _offer(self, theta: torch.Tensor, barrier: list[torch.Tensor] | None) -> Offer:
        parts = dict(zip(self.layers, torch.split(theta, self.sizes)))

        def offer(ctx: LayerContext, alpha: torch.Tensor, beta: torch.Tensor) -> Iterator[torch.Tensor]:
            part = parts[ctx.index]  # the free neurons depend on the fixed slopes only, not on theta
            assert part.shape == ctx.gamma.shape[:1]
            yield offered(part, ctx, barrier)

        return offer

    def evaluate(self, theta: torch.Tensor) -> Point | None:
        var = theta.detach().clone().requires_grad_(True)
        barrier: list[torch.Tensor] = []
        passes = [Pass([("optimized", self._offer(var, barrier if self.mu > 0 else None))], None)]
        live = torch.ones(self.net.input_dim, dtype=torch.bool)
        try:
            for k, (alpha, beta) in enumerate(zip(self.bound.alphas, self.bound.betas)):
                w = self.net.weights[k][:, live]
                vs = [w if p.factor is None else w @ p.factor for p in passes]
                passes, live = next_passes(self.net, k, passes, vs, alpha, beta)
        except InfeasibleCertificateError:
            return None
        (p,) = passes
        out = output_factor(self.net, p, live)
        y = out.T @ self.c
        objective = torch.log(y @ y) + p.log_scale
        if barrier:
            objective = objective - self.mu * torch.stack(barrier).sum()
        if not bool(torch.isfinite(objective)):
            return None
        g = (out @ out.T).detach()
        value = Gram((g + g.T) / 2, p.log_scale).along(self.c.numpy())  # as the closed-form passes are read
        return Point(var.detach(), float(objective.detach()), value, (objective, var))


def optimized_margin(net: Network, bound: LocalBound, c: np.ndarray | torch.Tensor, *,
                     iterations: int = DEFAULT_ITERATIONS, target: float = 0.0, deadline: float | None = None) -> float:
    """Bound on Lip(c^T f) on ``bound``'s ball (with ``anchored``, on |c^T (f(x') - f(x))| / ||x' - x||),
    with multipliers optimized from the best of ``bound``'s passes for c (L-BFGS on log lambda through
    the factored recursion, :func:`lipcert.bounds.lbfgs.minimize`).

    Every iterate is a certificate (same slopes, Cholesky-checked multipliers); the result is the best
    one, never above the start, and the search stops once it is at most ``target`` or at ``deadline``
    (a :func:`time.perf_counter` value).
    """
    vec = np.asarray(c.detach().cpu() if isinstance(c, torch.Tensor) else c, np.float64).ravel()
    if vec.shape != (net.output_dim,):
        raise ShapeMismatchError(f"direction must have {net.output_dim} entries (one per output), got {vec.size}")
    start = min(bound.grams, key=lambda name: bound.grams[name].along(vec))
    value = bound.grams[start].along(vec)
    thetas = bound.multipliers.get(start, {})
    if iterations <= 0 or not thetas or value <= target:
        return value
    layers = sorted(thetas)
    problem = _MarginProblem(net, bound, torch.from_numpy(vec), layers, [thetas[k].numel() for k in layers])
    with warnings.catch_warnings():  # the recursion reads its layer scales as floats: constants, by design
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad", UserWarning)
        best, _ = minimize(problem, torch.cat([thetas[k] for k in layers]), iterations, deadline, False,
                           "local optimized", target)
    return value if best is None else min(value, best.value)
