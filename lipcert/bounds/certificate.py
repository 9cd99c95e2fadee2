"""Rebuild the LipSDP-Neuron matrix from a bound's multipliers and check it (math.md sections 2, 8.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError, UnsupportedSlopesError
from ..network import Network, require_network
from .result import LipschitzBound

MAX_CHECK_SIZE = 6000


@dataclass(frozen=True)
class CertificateCheck:
    """Spectrum of the Jacobi-scaled D^-1/2 Q D^-1/2 (D = diag Q), rho = scale * value^2, T_k = rho Lambda_k.

    The congruence keeps Q's inertia (so PSD-ness) and removes the scale spread of deep nets,
    so a tolerance means the same on every net.  ``valid`` is
    ``min_eigenvalue >= -1e-9 * max(1, max_eigenvalue)``.  ``positive_definite`` says whether Q
    passes a Cholesky factorization: eigenvalues of a deep chain of near-singular blocks can sit
    below their solver's resolution, while the pivots of Cholesky still see the sign.
    """

    min_eigenvalue: float
    max_eigenvalue: float
    size: int
    valid: bool
    positive_definite: bool


def lipsdp_matrix(net: Network, rho: float, multipliers: list[torch.Tensor],
                  slopes: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The symmetric block-tridiagonal Q(rho, T) of math.md section 2 (T_k = diag(multipliers[k]))."""
    ws = net.weights
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    offsets = [0]
    for d in dims:
        offsets.append(offsets[-1] + d)
    q = torch.zeros(offsets[-1], offsets[-1], dtype=torch.float64)

    def block(i: int, j: int) -> torch.Tensor:
        return q[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]

    block(0, 0).add_(rho * torch.eye(dims[0], dtype=torch.float64))
    for k in range(1, len(ws)):  # hidden layer k uses W_k (0-based ws[k-1])
        t = multipliers[k - 1]
        alpha, beta = slopes[k - 1]
        w = ws[k - 1]
        block(k - 1, k - 1).add_(2 * w.T @ ((t * alpha * beta)[:, None] * w))
        block(k, k).add_(torch.diag(2 * t))
        off = -((alpha + beta) * t)[:, None] * w
        block(k, k - 1).add_(off)
        block(k - 1, k).add_(off.T)
    last = len(ws) - 1
    block(last, last).sub_(ws[-1].T @ ws[-1])
    return q


def check_certificate(net: Network, bound: LipschitzBound, *, scale: float = 1.0) -> CertificateCheck:
    """Rebuild Q(rho, rho Lambda) with rho = scale * L^2 from ``bound``; report its extreme eigenvalues.

    For a valid bound Q is PSD at scale 1 (math.md section 8.2).  L^2 is the smallest rho
    that the multipliers certify (Theorem 1), so at scale 1 - 1e-6 Q is indefinite.  Small nets only.
    ``net`` is the Network the bound was computed for (:class:`~lipcert.errors.NotANetworkError` otherwise).
    """
    net = require_network(net, "check_certificate")
    if not bound.multipliers and net.depth > 1:
        raise ShapeMismatchError(f"the {bound.method!r} bound (rule {bound.rule!r}) carries no LipSDP "
                                 "multipliers to check")
    if len(bound.multipliers) != net.depth - 1:
        raise ShapeMismatchError(f"bound has {len(bound.multipliers)} multiplier layers, the network "
                                 f"{net.depth - 1} hidden layers (was it computed for this network?)")
    if any(not bool(torch.isfinite(m).all()) for m in bound.multipliers):
        raise UnsupportedSlopesError("the bound takes the exact step through fixed-slope/|.| layers (infinite "
                                     "multipliers on fixed-slope neurons): there is no LipSDP matrix to rebuild")
    size = sum(net.widths[:-1])
    if size > MAX_CHECK_SIZE:
        raise ShapeMismatchError(f"certificate rebuild needs a {size} x {size} matrix; limit is {MAX_CHECK_SIZE}")
    rho = bound.value**2
    rho = scale * rho
    q = lipsdp_matrix(net, rho, [rho * m for m in bound.multipliers], list(bound.slopes))
    q = (q + q.T) / 2
    d = torch.diagonal(q)
    if bool((d <= 0).any()):  # a PSD matrix has a non-negative diagonal, zero only on zero rows
        return CertificateCheck(float(d.min()), float(d.max()), size, False, False)
    scale_vec = d.rsqrt()
    scaled = q * scale_vec[:, None] * scale_vec[None, :]
    eig = torch.linalg.eigvalsh(scaled)
    lo, hi = float(eig[0]), float(eig[-1])
    positive_definite = int(torch.linalg.cholesky_ex(scaled).info) == 0
    return CertificateCheck(lo, hi, size, lo >= -1e-9 * max(1.0, hi), positive_definite)
