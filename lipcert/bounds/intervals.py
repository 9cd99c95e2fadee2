"""Activations on an interval: the tightest sound slope interval and an enclosure of the image.

For a neuron whose pre-activation stays in [l, u], every secant slope (phi(a) - phi(b)) / (a - b)
with a, b in [l, u] lies in [inf phi', sup phi'] over [l, u] (mean value theorem; for piecewise
linear maps, the slopes of the pieces that meet [l, u]).  :func:`slope_interval` returns that
interval, vectorized over neurons:

* piecewise linear (relu, leaky_relu, hardtanh, relu6, abs): the slopes of the pieces met, exactly
  (stably inactive ReLU [0, 0], stably active [1, 1], unstable [0, 1]);
* elu(a): a e^z on the negative part (increasing), 1 on the positive part;
* smooth (sigmoid, tanh, softplus, silu, gelu, gelu_tanh): phi' at both ends, plus the extreme
  value of phi' at each of its interior critical points that may lie in [l, u].  phi' is
  monotone between the listed critical points, so these candidates contain its range.  A
  critical point counts when it lies within 1e-6 of [l, u] (its location is known to ~1e-16)
  and contributes its extreme value rounded outward, so the result does not depend on how
  accurately the location is known.  Computed values of phi' are widened (see ``_pad``).

Activations given only by slope bounds keep their global [alpha, beta].

:func:`anchored_slopes` narrows this to the secants that start at one point z0 (the pre-activation
at the input a radius is certified around), for ReLU-like, |.| (the abs neurons of the MaxMin/GroupSort
rewrite) and sigmoid, tanh, SiLU, GELU activations.
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
    if base == "abs":
        return [0.0], [-1.0, 1.0]
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
    if act.mask is not None and act.name == "abs_or_identity":  # |.|: slope 1 on [0, inf), -1 on (-inf, 0]
        on = torch.tensor(act.mask, dtype=torch.bool, device=lower.device)
        alpha = torch.where(on & (lower < 0), -1.0, 1.0).to(lower.dtype)
        beta = torch.where(on & (upper <= 0), -1.0, 1.0).to(lower.dtype)
        return alpha, beta
    if act.mask is not None:  # phi on the masked neurons, the identity (slope 1) on the others
        return _off_mask(act, *slope_interval(act.base(), lower, upper))
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


def _off_mask(act: Activation, alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes [1, 1] on the neurons off ``act``'s mask (the identity there), ``alpha``, ``beta`` on it."""
    assert act.mask is not None
    on = torch.tensor(act.mask, dtype=torch.bool, device=alpha.device)
    return torch.where(on, alpha, 1.0).to(alpha.dtype), torch.where(on, beta, 1.0).to(beta.dtype)


def image(act: Activation, lower: torch.Tensor, upper: torch.Tensor,
          alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on phi(z) over z in [lower, upper], given the slope interval [alpha, beta] there.

    Nondecreasing activations (global alpha >= 0) map the interval to [phi(lower), phi(upper)];
    the others (silu, gelu) use the mean value form from both ends,
    phi(z) in phi(l) + [min(alpha, 0), max(beta, 0)] (u - l), intersected with the same from u.
    Computed values of phi are widened (see ``_pad``).
    """
    vl, vu = act(lower), act(upper)
    fl, fu = (vl - _pad(vl, lower), vl + _pad(vl, lower)), (vu - _pad(vu, upper), vu + _pad(vu, upper))
    if act.alpha >= 0:
        return fl[0], fu[1]
    width = upper - lower
    down, up = torch.clamp(alpha, max=0.0) * width, torch.clamp(beta, min=0.0) * width
    lo = torch.maximum(fl[0] + down, fu[0] - up)
    hi = torch.minimum(fl[1] + up, fu[1] - down)
    return lo - 1e-15 * lo.abs(), hi + 1e-15 * hi.abs()


def anchored_slopes(act: Activation, lo: torch.Tensor, hi: torch.Tensor, zl0: torch.Tensor, zu0: torch.Tensor,
                    alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Secant slopes (phi(z) - phi(z0)) / (z - z0) for z in [lo, hi], z0 in [zl0, zu0] (the centre's).

    For an activation with one kink k between slopes p (left) and q (right), the secant is
    p + (q - p) w with w = (z0 - k) / (z0 - z) in [(z0 - k) / (z0 - lo), 1] when z0 > k, and
    w = (z - k) / (z - z0) in [0, (hi - k) / (hi - z0)] when z0 < k.  For sigmoid, tanh, SiLU and
    GELU see :func:`_anchored_smooth`.  Other activations keep [alpha, beta] (the slopes of all
    secants on [lo, hi]).
    """
    if act.mask is not None:  # phi's secants on the masked neurons only (|.| for abs_or_identity)
        return _off_mask(act, *anchored_slopes(act.base(), lo, hi, zl0, zu0, alpha, beta))
    pieces = _pieces(act)
    if pieces is None:
        if _params(act)[0] in _SMOOTH:
            return _anchored_smooth(act, lo, hi, zl0, zu0, alpha, beta)
        return alpha, beta
    if len(pieces[0]) != 1:
        return alpha, beta
    (k,), (p, q) = pieces
    right = (zl0 - k) / (zl0 - lo)                      # w_min when z0 > k (smallest at z0 = zl0)
    left = (hi - k) / (hi - zu0)                        # w_max when z0 < k (largest at z0 = zu0)
    slack = _slack(lo)
    w_lo = torch.where((zl0 > k) & (lo < zl0), torch.clamp(right * (1 - slack), min=0.0), 0.0)
    w_hi = torch.where((zu0 < k) & (hi > zu0), torch.clamp(left * (1 + slack), max=1.0), 1.0)
    a, b = p + (q - p) * w_lo, p + (q - p) * w_hi
    a, b = torch.minimum(a, b), torch.maximum(a, b)
    a, b = a - slack * a.abs(), b + slack * b.abs()
    return torch.maximum(alpha, a), torch.minimum(beta, b)


_SMOOTH = ("sigmoid", "tanh", "silu", "gelu", "gelu_tanh")
"""Smooth activations with anchored secants: phi' is monotone between the listed critical points
(softplus is left out: torch's softplus jumps by ~2e-9 at its threshold, so computed secants near
it are not trustworthy)."""


def _anchored_smooth(act: Activation, lo: torch.Tensor, hi: torch.Tensor, zl0: torch.Tensor, zu0: torch.Tensor,
                     alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchored secants of a smooth activation, one side of z0 at a time.

    On the side [z0, hi] the secant to z is the mean of phi' over [z0, z]; where phi' is monotone
    on [zl0, hi], that mean is monotone in z, so it lies between phi'(z0) and the secant to hi
    (enclosed by interval arithmetic over z0 in [zl0, zu0]).  Otherwise the side keeps the slope
    interval of [zl0, hi].  The same on [lo, z0]; the result is the hull of both sides.
    """
    base = _params(act)[0]
    slack = _slack(lo)
    d0 = slope_interval(act, zl0, zu0)                  # phi'(z0) for z0 in the enclosure
    f0 = image(act, zl0, zu0, *d0)
    fl, fh = (image(act, z, z, *slope_interval(act, z, z)) for z in (lo, hi))
    a, b = d0
    # Per side: its span, and the secant's numerator and denominator intervals.
    for span, num, den in (((torch.minimum(zl0, hi), hi), (fh[0] - f0[1], fh[1] - f0[0]), (hi - zu0, hi - zl0)),
                           ((lo, torch.maximum(zu0, lo)), (f0[0] - fl[1], f0[1] - fl[0]), (zl0 - lo, zu0 - lo))):
        monotone = torch.ones_like(lo, dtype=torch.bool)
        for c, _ in _CRITICAL[base]:
            monotone &= (span[1] < c - 1e-6) | (span[0] > c + 1e-6)
        num_lo, num_hi = num[0] - slack * num[0].abs(), num[1] + slack * num[1].abs()
        den_lo, den_hi = den[0] * (1 - slack), den[1] * (1 + slack)
        ok = monotone & (den_lo > 0)
        den_lo, den_hi = torch.where(ok, den_lo, 1.0), torch.where(ok, den_hi, 1.0)
        sec_lo = torch.minimum(num_lo / den_lo, num_lo / den_hi)
        sec_hi = torch.maximum(num_hi / den_lo, num_hi / den_hi)
        side = slope_interval(act, *span)
        a = torch.minimum(a, torch.where(ok, sec_lo - slack * sec_lo.abs(), side[0]))
        b = torch.maximum(b, torch.where(ok, sec_hi + slack * sec_hi.abs(), side[1]))
    return torch.maximum(alpha, a), torch.minimum(beta, b)


def _slack(t: torch.Tensor) -> float:
    """Relative widening of a few roundings: 4 machine epsilons of ``t``'s dtype."""
    return 4 * torch.finfo(t.dtype).eps
