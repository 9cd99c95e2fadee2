"""Activations on an interval: the tightest sound slope interval and an enclosure of the image.

For a neuron whose pre-activation stays in [l, u], every secant slope (phi(a) - phi(b)) / (a - b)
with a, b in [l, u] lies in [inf phi', sup phi'] over [l, u] (mean value theorem; for piecewise
linear maps, the slopes of the pieces that meet [l, u]).  :func:`slope_interval` returns that
interval, vectorized over neurons:

* piecewise linear (relu, leaky_relu, hardtanh, relu6): the slopes of the pieces met, exactly
  (stably inactive ReLU [0, 0], stably active [1, 1], unstable [0, 1]);
* elu(a): a e^z on the negative part (increasing), 1 on the positive part;
* smooth (sigmoid, tanh, softplus, silu, gelu, gelu_tanh): phi' at both ends, plus the extreme
  value of phi' at each of its interior critical points that may lie in [l, u].  phi' is
  monotone between the listed critical points, so these candidates contain its range.  A
  critical point counts when it lies within 1e-6 of [l, u] (its location is known to ~1e-16)
  and contributes its extreme value rounded outward, so the result does not depend on how
  accurately the location is known.  Computed values of phi' are widened (see ``_pad``).

Activations given only by slope bounds keep their global [alpha, beta].
"""

from __future__ import annotations

import math

import torch

from ..activations import GELU_SLOPES, GELU_TANH_SLOPES, SILU_SLOPES, Activation

# Interior critical points of phi' (location, outward-rounded value of phi' there).
_SILU_CRIT = 2.3993572805154677
_GELU_TANH_CRIT = 1.4185040087908284
_CRITICAL: dict[str, tuple[tuple[float, float], ...]] = {
    "sigmoid": ((0.0, 0.25),),
    "tanh": ((0.0, 1.0),),
    "softplus": (),
    "silu": ((-_SILU_CRIT, SILU_SLOPES[0]), (_SILU_CRIT, SILU_SLOPES[1])),
    "gelu": ((-math.sqrt(2), GELU_SLOPES[0]), (math.sqrt(2), GELU_SLOPES[1])),
    "gelu_tanh": ((-_GELU_TANH_CRIT, GELU_TANH_SLOPES[0]), (_GELU_TANH_CRIT, GELU_TANH_SLOPES[1])),
}
_WINDOW = 1e-6


def _params(act: Activation) -> tuple[str, list[float]]:
    base, _, rest = act.name.partition("(")
    return base, [float(p) for p in rest.rstrip(")").split(",") if p.strip()]


def _pieces(act: Activation) -> tuple[list[float], list[float]] | None:
    """Breakpoints and slopes of a piecewise linear activation (None if it is not one)."""
    base, p = _params(act)
    if base == "relu":
        return [0.0], [0.0, 1.0]
    if base == "leaky_relu":  # slopes [a, 1]: a is whichever of alpha, beta is not 1
        return [0.0], [act.alpha if act.beta == 1.0 else act.beta, 1.0]
    if base == "hardtanh":
        return ([p[0], p[1]] if p else [-1.0, 1.0]), [0.0, 1.0, 0.0]
    if base == "relu6":
        return [0.0, 6.0], [0.0, 1.0, 0.0]
    return None


def _pad(value: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Error allowed on a computed phi(z) or phi'(z): relative 1e-12 plus 1e-14 (1 + |z|)^3.

    The absolute part covers cancellation in the tails (e.g. 1 - tanh^2 times a cubic in z in
    GELU-tanh', 1 + erf in GELU'), whose error grows at most like (1 + |z|)^3 ulps of 1.
    """
    return 1e-12 * value.abs() + 1e-14 * (1 + z.abs()) ** 3


def slope_interval(act: Activation, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron [alpha, beta] containing every secant slope of ``act`` on [lower, upper].

    Parameters
    ----------
    act : Activation
    lower, upper : Tensor, shape (n,)
        Bounds on the pre-activations, lower <= upper.

    Returns
    -------
    (alpha, beta) : tuple of Tensor, shape (n,)
        Sound and, up to the outward rounding described in the module docstring, the tightest.
    """
    pieces = _pieces(act)
    if pieces is not None:
        # Names carry parameters to 6 digits: a breakpoint b counts within 1e-5 |b| of [l, u].
        points, slopes = pieces
        edges = [-math.inf, *points, math.inf]
        alpha = torch.full_like(lower, math.inf)
        beta = torch.full_like(lower, -math.inf)
        for s, a, b in zip(slopes, edges[:-1], edges[1:]):
            meets = (upper >= a - 1e-5 * abs(a)) & (lower <= b + 1e-5 * abs(b))
            alpha = torch.where(meets, torch.clamp(alpha, max=s), alpha)
            beta = torch.where(meets, torch.clamp(beta, min=s), beta)
        return alpha, beta
    base, p = _params(act)
    if act.derivative is None:
        return torch.full_like(lower, act.alpha), torch.full_like(lower, act.beta)
    if base == "elu":
        a = p[0] if p else 1.0
        zl, zu = torch.clamp(lower, max=0.0), torch.clamp(upper, max=0.0)
        neg_lo, neg_hi = a * torch.exp(zl), a * torch.exp(zu)
        neg_lo, neg_hi = neg_lo - _pad(neg_lo, zl), neg_hi + _pad(neg_hi, zu)
        alpha = torch.where(lower > 0, 1.0, torch.where(upper > 0, torch.clamp(neg_lo, max=1.0), neg_lo))
        beta = torch.where(lower > 0, 1.0, torch.where(upper > 0, torch.clamp(neg_hi, min=1.0), neg_hi))
        return torch.clamp(alpha, min=act.alpha), torch.clamp(beta, max=act.beta)
    if base not in _CRITICAL:
        return torch.full_like(lower, act.alpha), torch.full_like(lower, act.beta)
    dl, du = act.derivative(lower), act.derivative(upper)
    dl_lo, dl_hi = dl - _pad(dl, lower), dl + _pad(dl, lower)
    du_lo, du_hi = du - _pad(du, upper), du + _pad(du, upper)
    alpha, beta = torch.minimum(dl_lo, du_lo), torch.maximum(dl_hi, du_hi)
    if base == "softplus":  # torch's softplus(b) is z itself above its threshold b z > 20: slope 1 there
        beta = torch.where(upper * (p[0] if p else 1.0) > 20, 1.0, beta)
    for c, value in _CRITICAL[base]:
        inside = (lower <= c + _WINDOW) & (upper >= c - _WINDOW)
        alpha = torch.where(inside, torch.clamp(alpha, max=value), alpha)
        beta = torch.where(inside, torch.clamp(beta, min=value), beta)
    return torch.clamp(alpha, min=act.alpha), torch.clamp(beta, max=act.beta)


def image(act: Activation, lower: torch.Tensor, upper: torch.Tensor,
          alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on phi(z) over z in [lower, upper], given the slope interval [alpha, beta] there.

    Nondecreasing activations (global alpha >= 0) map the interval to [phi(lower), phi(upper)];
    the others (silu, gelu) use the mean value form from both ends,
    phi(z) in phi(l) + [min(alpha, 0), max(beta, 0)] (u - l), intersected with the same from u.
    Computed values of phi are widened (see ``_pad``).
    """
    fl, fu = act(lower), act(upper)
    fl, fu = (fl - _pad(fl, lower), fl + _pad(fl, lower)), (fu - _pad(fu, upper), fu + _pad(fu, upper))
    if act.alpha >= 0:
        return fl[0], fu[1]
    width = upper - lower
    down, up = torch.clamp(alpha, max=0.0) * width, torch.clamp(beta, min=0.0) * width
    lo = torch.maximum(fl[0] + down, fu[0] - up)
    hi = torch.minimum(fl[1] + up, fu[1] - down)
    return lo - 1e-15 * lo.abs(), hi + 1e-15 * hi.abs()
