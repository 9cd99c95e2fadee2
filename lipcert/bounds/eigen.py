"""Certified upper bounds on the largest eigenvalue of a symmetric matrix.

Small matrices use the dense ``eigvalsh``; larger ones a Lanczos estimate (ARPACK's ``eigsh`` on
the CPU, ``torch.lobpcg`` on other devices), which is confirmed by a Cholesky factorization of
theta I - A: if it succeeds, theta > lambda_max(A) (math.md section 5, lambda_max).  A failed
confirmation widens theta, and after a few tries falls back to the dense solver, so the returned
value is an upper bound in every case.
"""

from __future__ import annotations

import torch

DENSE_BELOW = 400
_RELATIVE_SLACK = (1e-7, 1e-4, 1e-2)


def _dense_upper(sym: torch.Tensor) -> float:
    w = torch.linalg.eigvalsh(sym)
    # eigvalsh is backward stable: each eigenvalue is within ~n eps ||A|| of the truth.
    err = 8 * sym.shape[0] * torch.finfo(sym.dtype).eps * float(w.abs().max())
    return float(w[-1]) + err


def _lanczos_estimate(sym: torch.Tensor) -> float:
    """Lanczos estimate of lambda_max on the matrix scaled to unit max |entry| (solver tolerances are absolute)."""
    scale = float(sym.abs().max())
    if scale == 0.0:
        return 0.0
    unit = sym / scale
    if sym.device.type == "cpu":
        from scipy.sparse.linalg import ArpackError, eigsh

        try:
            return scale * float(eigsh(unit.numpy(), k=1, which="LA", tol=1e-10, return_eigenvectors=False)[0])
        except ArpackError:
            return float("nan")
    theta, _ = torch.lobpcg(unit, k=1, largest=True, tol=1e-8)
    return scale * float(theta[0])


def confirms_upper(sym: torch.Tensor, theta: float) -> bool:
    """True if theta I - A passes Cholesky, i.e. theta > lambda_max(A)."""
    eye = torch.eye(sym.shape[0], dtype=sym.dtype, device=sym.device)
    return int(torch.linalg.cholesky_ex(theta * eye - sym).info) == 0


def lambda_max(sym: torch.Tensor, *, dense_below: int = DENSE_BELOW) -> torch.Tensor:
    """A certified upper bound on lambda_max of the symmetric matrix ``sym`` (0-d tensor, same dtype)."""
    n = sym.shape[0]
    if n < dense_below:
        return torch.tensor(_dense_upper(sym), dtype=sym.dtype, device=sym.device)
    theta = _lanczos_estimate(sym)
    if theta == theta:  # not NaN
        scale = max(abs(theta), float(torch.diagonal(sym).abs().max()), torch.finfo(sym.dtype).tiny)
        for slack in _RELATIVE_SLACK:
            candidate = theta + slack * scale
            if confirms_upper(sym, candidate):
                return torch.tensor(candidate, dtype=sym.dtype, device=sym.device)
    return torch.tensor(_dense_upper(sym), dtype=sym.dtype, device=sym.device)
