"""The layerwise recursion of Theorem 1 with general slopes (math.md sections 3, 4, 5, 7(ii)).

With M_0 = I and, for each hidden layer k, S_k = A_k + B_k and P_k = A_k B_k (diagonal)::

    X_{k-1} = M_{k-1} + 2 W_k^T Lambda_k P_k W_k                        (must be > 0)
    M_k     = 2 Lambda_k - Lambda_k S_k W_k X_{k-1}^{-1} W_k^T S_k Lambda_k  (must be > 0)
    G_L     = W_L M_{L-1}^{-1} W_L^T,      Lip(c^T f) <= sqrt(c^T G_L c).

For [0, 1] slopes this is Gamma_k = W_k M_{k-1}^{-1} W_k^T and M_k = 2 Lambda - Lambda Gamma Lambda.
The multipliers Lambda_k come from a *chooser* that sees the normalized majorant
Gamma_k = S_k W_k M_{k-1}^{-1} W_k^T S_k.  Numerics follow section 5: float64 by default,
Cholesky factors and triangular solves instead of inverses, every layer renormalized with its
scale kept in log space, feasibility decided by Cholesky with a safety margin (a failed
Cholesky means "infeasible": the next candidate is tried), and the margin-reduced matrices are
the ones carried forward, which by monotonicity (Mo) keeps the certificate valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InfeasibleCertificateError

# Safety margin before every Cholesky, relative to the diagonal, in units of n * machine epsilon.
_MARGIN_EPS_PER_DIM = 4
_MAX_HALVINGS = 60


@dataclass(frozen=True)
class LayerContext:
    """What a multiplier chooser sees at hidden layer ``index`` (1-based).

    ``gamma`` is the normalized majorant (max diagonal 1) and ``next_weight`` the matrix that
    follows (S_{k+1} W_{k+1}, or W_L after the last hidden layer), for choosers that look ahead.
    ``log_scale`` is log of the factor that turns ``gamma`` into the true Gamma_k.
    """

    index: int
    gamma: torch.Tensor
    next_weight: torch.Tensor
    log_scale: float


Candidate = tuple[str, torch.Tensor]
Chooser = Callable[[LayerContext], Iterable[Candidate]]


@dataclass
class RecursionResult:
    """Outcome of one pass: G_L = exp(log_scale) * gram, the true multipliers, and notes."""

    gram: torch.Tensor
    log_scale: float
    multipliers: list[torch.Tensor]
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """sqrt(lambda_max(G_L)) inflated by a relative 1e-8 (math.md section 5, rigour)."""
        top = float(torch.linalg.eigvalsh(self.gram)[-1]) if self.gram.shape[0] > 1 else float(self.gram[0, 0])
        return math.sqrt(max(top, 0.0)) * math.exp(self.log_scale / 2) * (1 + 1e-8)


def upper_cholesky(mat: torch.Tensor) -> torch.Tensor | None:
    """Upper Cholesky factor R (mat = R^T R) of a symmetrized matrix, or None if not positive definite."""
    sym = (mat + mat.T) / 2
    low, info = torch.linalg.cholesky_ex(sym)
    if int(info) != 0 or not bool(torch.isfinite(low).all()):
        return None
    return low.T


def shrink(mat: torch.Tensor) -> torch.Tensor:
    """mat - delta Diag(mat) with delta = 4 n eps: the margin every Cholesky test is taken with.

    Cholesky's rounding error is bounded entrywise by a multiple of sqrt(m_ii m_jj), so a margin
    relative to the diagonal has the same meaning at every scale of a deep net.
    """
    delta = _MARGIN_EPS_PER_DIM * mat.shape[0] * torch.finfo(mat.dtype).eps
    return mat - torch.diag(delta * torch.diagonal(mat))


def solve_rt(r: torch.Tensor | None, rhs: torch.Tensor) -> torch.Tensor:
    """R^{-T} rhs for an upper factor R (identity when R is None)."""
    if r is None:
        return rhs
    return torch.linalg.solve_triangular(r.T, rhs, upper=False)


def run(
    weights: list[torch.Tensor],
    slopes: list[tuple[torch.Tensor, torch.Tensor]],
    chooser: Chooser,
) -> RecursionResult:
    """Run the recursion on weights W_1..W_L with per-neuron slopes, multipliers from ``chooser``.

    ``slopes[k]`` are the (alpha, beta) the certificate uses for hidden layer k+1 (callers may
    relax alpha >= 0 to 0).  Neurons whose row of S_k W_k is zero are constant and dropped.
    Raises :class:`InfeasibleCertificateError` if no candidate of the chooser is feasible.
    """
    r: torch.Tensor | None = None  # upper Cholesky factor of the normalized M_{k-1}; None = identity
    log_scale = 0.0
    multipliers: list[torch.Tensor] = []
    labels: list[str] = []
    notes: list[str] = []
    weight = weights[0]
    for k in range(len(weights) - 1):
        alpha, beta = slopes[k]
        s_vec, p_vec = alpha + beta, alpha * beta
        v = s_vec[:, None] * weight                      # S_k W_k
        y = solve_rt(r, v.T)                              # R^{-T} W^T S
        gamma = y.T @ y
        gamma = (gamma + gamma.T) / 2
        diag = torch.diagonal(gamma)
        scale = float(diag.max()) if diag.numel() else 0.0
        live = diag > 0
        nxt = weights[k + 1]
        if scale == 0.0 or not bool(live.any()):   # every neuron constant: f is constant
            return RecursionResult(torch.zeros(weights[-1].shape[0], weights[-1].shape[0], dtype=weight.dtype,
                                               device=weight.device), 0.0, multipliers, labels,
                                   notes + [f"layer {k + 1}: constant"])
        full_lam = torch.zeros_like(diag)
        if not bool(live.all()):
            keep = live
            gamma, v, weight, p_vec = gamma[keep][:, keep], v[keep], weight[keep], p_vec[keep]
            s_vec = s_vec[keep]
            nxt = nxt[:, keep]
        else:
            keep = None
        gamma = gamma / scale
        log_scale += math.log(scale)
        next_s = (slopes[k + 1][0] + slopes[k + 1][1]) if k + 1 < len(slopes) else None
        ctx = LayerContext(k + 1, gamma, nxt if next_s is None else next_s[:, None] * nxt, log_scale)
        has_p = bool((p_vec != 0).any())
        accepted = None
        for label, lam in chooser(ctx):
            found = _feasible(gamma, lam, r, weight, v, p_vec, scale) if has_p else factor_certificate(gamma, lam)
            if found is not None:
                accepted = (label, found)
                break
        if accepted is None:
            raise InfeasibleCertificateError(f"no feasible multipliers at hidden layer {k + 1}")
        label, (lam, r) = accepted
        if keep is not None:
            full_lam[keep] = lam
            notes.append(f"layer {k + 1}: {int((~keep).sum())} constant neurons dropped")
        else:
            full_lam = lam
        multipliers.append(full_lam * math.exp(-log_scale))
        labels.append(label)
        weight = nxt
    y = solve_rt(r, weight.T)
    gram = y.T @ y
    return RecursionResult((gram + gram.T) / 2, log_scale, multipliers, labels, notes)


def factor_certificate(gamma: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """P = 0: Cholesky of C' = shrink(2 diag(1/lambda) - Gamma); then R_M = R_C diag(lambda).

    M' = Lambda C' Lambda <= M, so carrying R_M forward is valid (monotonicity).
    """
    if not bool(torch.isfinite(lam).all()) or not bool((lam > 0).all()):
        return None
    rc = upper_cholesky(shrink(torch.diag(2.0 / lam) - gamma))
    if rc is None:
        return None
    return lam, rc * lam[None, :]


def _feasible(gamma: torch.Tensor, lam: torch.Tensor, r: torch.Tensor | None, weight: torch.Tensor,
              v: torch.Tensor, p_vec: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """General slopes: halve lambda until X_{k-1} and M_k both pass Cholesky (math.md section 7(ii))."""
    if not bool(torch.isfinite(lam).all()) or not bool((lam > 0).all()):
        return None
    m_prev = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device) if r is None else r.T @ r
    for _ in range(_MAX_HALVINGS):
        x = m_prev + 2 * weight.T @ ((lam * p_vec / scale)[:, None] * weight)
        rx = upper_cholesky(shrink(x))
        if rx is not None:
            z = solve_rt(rx, v.T)
            gx = (z.T @ z) / scale
            m = torch.diag(2 * lam) - lam[:, None] * gx * lam[None, :]
            rm = upper_cholesky(shrink(m))
            if rm is not None:
                return lam, rm
        if bool((p_vec >= 0).all()):  # halving cannot help when P >= 0 (X >= M already)
            return None
        lam = lam / 2
    return None
