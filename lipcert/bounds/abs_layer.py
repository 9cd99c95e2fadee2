"""The exact recursion step for layers of fixed-slope and |.|-type neurons (docs/decisions.md 19).

A hidden layer whose every neuron has alpha = beta (a fixed slope a: identity-like) or
alpha = -beta (slope in [-beta, beta]: absolute-value-like) is what MaxMin, GroupSort and
Householder activations become after the orthogonal rewrite.  With the rows of W scaled by a
(fixed neurons, the set U) or beta (the set V), Gamma = W M_{k-1}^{-1} W^T, and any diagonal
D > Gamma_V, the form carried to the next layer is, in inverse form P_k = M_k^{-1},

    P_k[U, U] = Gamma_U + Gamma_UV (D - Gamma_V)^{-1} Gamma_VU,   P_k[V, V] = D,   P_k[U, V] = 0.

This is the Schur complement of the LipSDP quadratic form with the equality constraint
dphi_U = W_U dh imposed exactly (the limit of multipliers -> infinity of the general recursion,
math.md 7(ii), which only approaches it) and the |.| constraint dz^2 - dphi^2 >= 0 with
multipliers Lambda_V = D^{-1} / 2.  D is the rescaled majorant (1 + tau) g_S S of Gamma_V for a
diagonal shape S (I, Diag Gamma_V or Gershgorin row sums) with g_S a certified
lambda_max(S^{-1/2} Gamma_V S^{-1/2}), and tau balancing the two blocks, tau = sqrt(xi) with xi
the relative size of Gamma_UV (g_S S)^{-1} Gamma_VU against Gamma_U.  On orthogonal maps
(Gamma_UV = 0) this gives P_k = Gamma, so a chain of MaxMin stages keeps the bound at 1.
A tau per |.| neuron (balanced against that neuron's own coupling) is a candidate too: through
one comparator with input form diag(a, b) it gives max(a, b) on both outputs.  Since
|dphi_j| <= |dz_j| on every neuron of the layer, P_k = g_S S >= Gamma (all neurons treated like
|.|) is valid as well: it composes like the naive product through orthogonal stages.  Each step
keeps the candidate with the smallest lambda_max (or trace) of N P_k N^T, N the next matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnsupportedSlopesError
from .eigen import lambda_max, top_eigenvalue

_TAU_MIN = 1e-12
_TAU_STEPS = 8
_MARGIN_EPS_PER_DIM = 4


LABELS = ("exact(", "diagonal(")
"""Prefixes of the layer labels of the exact step (not fallbacks of a rule)."""
TRACE_PASS = "exact(trace)"
"""Name of the pass whose exact steps rank candidates by trace (``combined``)."""


@dataclass
class AbsStep:
    """One exact step: the upper factor of the new normalized M_k, the log of its scale, the live neurons,
    and the normalized multipliers (inf on fixed-slope neurons, 1 / (2 D) on |.| neurons, 0 if constant)."""

    r: torch.Tensor | None
    log_scale: float
    live: torch.Tensor
    multipliers: torch.Tensor
    label: str


def needs_exact_step(alpha: torch.Tensor, beta: torch.Tensor) -> bool:
    """True for a layer with a fixed-slope (alpha = beta != 0) or a |.|-type (alpha = -beta != 0) neuron.

    Such a layer must go through :func:`step`: the general recursion would drop |.| neurons
    (their S = alpha + beta is 0) and is loose on fixed slopes.  Raises
    :class:`UnsupportedSlopesError` when such neurons share the layer with other slopes.
    """
    fixed = alpha == beta
    symmetric = alpha == -beta
    special = (fixed & (alpha != 0)) | (symmetric & (beta != 0))
    if not bool(special.any()):
        return False
    if not bool((fixed | symmetric).all()):
        raise UnsupportedSlopesError("a hidden layer mixes fixed-slope or |.| neurons (alpha = beta or alpha = -beta) "
                                     "with other slopes; lipcert certifies such layers only when every neuron is "
                                     "of these two kinds")
    return True


def step(r: torch.Tensor | None, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
         nxt: torch.Tensor, score: str = "top") -> AbsStep:
    """The exact step through one fixed-slope/|.| layer, from the upper factor ``r`` of M_{k-1} (normalized).

    ``nxt`` is the next weight matrix: among the shapes of D the one with the smallest
    lambda_max(nxt P_k nxt^T) is kept.  Returns ``r = None`` with ``live`` all False when the
    layer's output is constant.
    """
    fixed = alpha == beta
    coef = torch.where(fixed, alpha, beta)
    live = (coef != 0) & (weight != 0).any(dim=1)
    n = weight.shape[0]
    mult = torch.zeros(n, dtype=weight.dtype, device=weight.device)
    if not bool(live.any()):
        return AbsStep(None, 0.0, live, mult, "constant")
    w = coef[live, None] * weight[live]
    y = w.T if r is None else torch.linalg.solve_triangular(r.T, w.T, upper=False)
    gamma = y.T @ y
    gamma = (gamma + gamma.T) / 2
    scale = float(torch.diagonal(gamma).max())
    gamma = gamma / scale
    u = fixed[live]
    v = ~u
    p, lam_v, label = _form(gamma, u, v, nxt[:, live], _top if score == "top" else _trace)
    label = label if score == "top" else f"{label} by trace"
    lam = torch.full((int(live.sum()),), math.inf, dtype=weight.dtype, device=weight.device)
    lam[v] = lam_v
    mult[live] = lam
    return AbsStep(_upper_inverse_factor(p), math.log(scale), live, mult, label)


def _form(gamma: torch.Tensor, u: torch.Tensor, v: torch.Tensor, nxt: torch.Tensor,
          rank: Callable[[torch.Tensor], float]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """P_k for the best shape of D (module docstring), its |.| multipliers 1 / (2 D), and the shape's label."""
    if not bool(v.any()):
        return gamma, gamma.new_zeros(0), "exact(identity)"
    best: tuple[float, torch.Tensor, torch.Tensor, str] | None = None
    for label, shape in _shapes(gamma).items():  # every neuron bounded like |.|: P_k = D >= Gamma
        d = (1 + _TAU_MIN) * float(lambda_max(gamma * shape.rsqrt()[:, None] * shape.rsqrt()[None, :])) * shape
        score = rank((nxt * d[None, :]) @ nxt.T)
        if best is None or score < best[0]:
            best = (score, torch.diag(d), 1 / (2 * d[v]), f"diagonal({label})")
    g_v = gamma[v][:, v]
    g_uv = gamma[u][:, v]
    g_u = gamma[u][:, u]
    for label, shape in _shapes(g_v).items():
        inv_sqrt = shape.rsqrt()
        base = float(lambda_max(g_v * inv_sqrt[:, None] * inv_sqrt[None, :])) * shape
        for per_neuron in (False, True):
            found = _with_base(g_u, g_uv, g_v, base, per_neuron)
            if found is None:
                continue
            p_u, d = found
            p = torch.zeros_like(gamma)
            p[torch.outer(u, u)] = p_u.reshape(-1)
            p[v.nonzero()[:, 0], v.nonzero()[:, 0]] = d
            score = rank(nxt @ p @ nxt.T)
            if best is None or score < best[0]:
                best = (score, p, 1 / (2 * d), f"exact({label}{', per-neuron tau' if per_neuron else ''})")
    assert best is not None  # the diagonal candidates always exist
    return best[1], best[2], best[3]


def _shapes(gamma: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagonal shapes S of a majorant g_S S of gamma: identity, Jacobi (its diagonal), Gershgorin row sums."""
    tiny = torch.finfo(gamma.dtype).tiny
    return {"sn": torch.ones_like(torch.diagonal(gamma)), "jacobi": torch.diagonal(gamma).clamp_min(tiny),
            "gc": gamma.abs().sum(dim=1).clamp_min(tiny)}


def _with_base(g_u: torch.Tensor, g_uv: torch.Tensor, g_v: torch.Tensor, base: torch.Tensor, per_neuron: bool
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(P_U, D) for D = (1 + tau) base, base a diagonal majorant of Gamma_V, tau from the coupling (one value,
    or one per |.| neuron: tau_j^2 = max_i Gamma_UV[i, j]^2 / (base_j Gamma_U[i, i])), raised until
    D - Gamma_V passes Cholesky."""
    tiny = torch.finfo(g_v.dtype).tiny
    tau = torch.full_like(base, _TAU_MIN)
    if g_u.numel() and bool((g_uv != 0).any()):
        ratio = g_uv * g_uv / base[None, :] / torch.diagonal(g_u).clamp_min(tiny)[:, None]
        if per_neuron:
            tau = ratio.max(dim=0).values.sqrt().clamp(_TAU_MIN, 1.0)
        else:
            tau.fill_(min(1.0, max(_TAU_MIN, math.sqrt(float(ratio.sum(dim=1).max())))))
    delta = _MARGIN_EPS_PER_DIM * g_v.shape[0] * torch.finfo(g_v.dtype).eps
    for _ in range(_TAU_STEPS):
        d = (1 + tau) * base
        c = torch.diag(d) - g_v
        low, info = torch.linalg.cholesky_ex(c - delta * torch.diag(torch.diagonal(c).abs()))
        if int(info) == 0 and bool(torch.isfinite(low.diagonal()).all()):
            if not g_u.numel():
                return g_u, d
            z = torch.linalg.solve_triangular(low, g_uv.T, upper=False)
            p_u = g_u + z.T @ z
            return (p_u + p_u.T) / 2, d
        tau = tau * 16
    return None


def _top(sym: torch.Tensor) -> float:
    """An estimate of lambda_max (it only ranks the shapes)."""
    n = sym.shape[0]
    return top_eigenvalue(lambda x: sym @ x, n, dense=(sym + sym.T) / 2, dtype=sym.dtype, device=sym.device)


def _trace(sym: torch.Tensor) -> float:
    """The trace (ranks shapes by their mean size, which the next orthogonal stages carry on)."""
    return float(torch.diagonal(sym).sum())


def _upper_inverse_factor(p: torch.Tensor) -> torch.Tensor:
    """Upper R with R^T R <= (P + delta Diag P)^{-1}: R = U^{-1} / (1 + slack) for the upper factor U U^T of
    the inflated P, the slack bounding ||R U - I|| (the inverse's rounding, large for ill-conditioned P).

    Enlarging P shrinks M = P^{-1}, which keeps the certificate valid (math.md 3, (Mo)).
    """
    n = p.shape[0]
    delta = _MARGIN_EPS_PER_DIM * n * torch.finfo(p.dtype).eps
    inflated = p + delta * torch.diag(torch.diagonal(p))
    flip = torch.flip(inflated, dims=(0, 1))
    low, info = torch.linalg.cholesky_ex((flip + flip.T) / 2)
    if int(info) != 0 or not bool(torch.isfinite(low.diagonal()).all()):
        raise UnsupportedSlopesError("the form carried through a fixed-slope/|.| layer is singular (more fixed-slope "
                                     "neurons than the layer's input can span)")
    upper = torch.flip(low, dims=(0, 1))
    eye = torch.eye(n, dtype=p.dtype, device=p.device)
    r = torch.linalg.solve_triangular(upper, eye, upper=True)
    # R^T R <= (U U^T)^{-1} needs ||R U|| <= 1; R U = I + E, so divide R by 1 + ||E|| (plus E's own rounding)
    eps = torch.finfo(p.dtype).eps
    slack = float(torch.linalg.matrix_norm(r @ upper - eye)) + 4 * n * eps * float(r.norm() * upper.norm())
    return r / (1 + slack)
