"""Largest eigenvalues of symmetric matrices: certified upper bounds and fast estimates.

Small matrices use the dense ``eigvalsh``.  Larger ones use a Lanczos iteration with full
reorthogonalization written in torch (so it runs on the tensors' device, in their dtype, and
under torch's own thread settings: no second BLAS thread pool competes with torch's).

* :func:`lambda_max` is a *certified upper bound*: the Lanczos value plus a small slack is
  confirmed by a Cholesky factorization of theta I - A (if it succeeds, theta > lambda_max(A));
  a failed confirmation widens theta and finally falls back to the dense solver (math.md
  section 5, lambda_max).
* :func:`top_eigenvalue` is an *estimate* (a Ritz value, never above lambda_max in exact
  arithmetic) of a matrix given as a matrix-vector product.  The closed-form rules use it: they
  only need some feasible multipliers, and feasibility is decided afterwards by the driver's
  Cholesky of 2 diag(1/lambda) - Gamma, so an estimate costs nothing in soundness and saves the
  confirming factorization (decisions.md item 6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DENSE_BELOW = 400
ESTIMATE_DENSE_BELOW = 160
_RELATIVE_SLACK = (1e-7, 1e-4, 1e-2)
_CHECK_EVERY = 4
_REORTH_AGAIN = 0.5**0.5  # second Gram-Schmidt pass when a pass keeps less than this fraction of the norm

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _dense_upper(sym: torch.Tensor) -> float:
    w = torch.linalg.eigvalsh(sym)
    # eigvalsh is backward stable: each eigenvalue is within ~n eps ||A|| of the truth.
    err = 8 * sym.shape[0] * torch.finfo(sym.dtype).eps * float(w.abs().max())
    return float(w[-1]) + err


def lanczos(matvec: MatVec, n: int, *, dtype: torch.dtype, device: torch.device, tol: float = 1e-10,
            max_steps: int = 400, seed: int = 0) -> tuple[float, float]:
    """Top Ritz value theta of a symmetric operator and the norm of its Ritz residual.

    Lanczos with full reorthogonalization (classical Gram-Schmidt against the whole basis, a
    second pass only when the first removed most of the vector: "twice is enough") from a
    deterministic random start.  Some eigenvalue of A lies within the residual r of theta, and
    once theta has settled on the top eigenvalue its error is about r^2 / gap (gap to the next
    Ritz value); the iteration stops when min(r, r^2 / gap) <= ``tol * |theta|``.  theta never
    exceeds lambda_max(A) in exact arithmetic (Cauchy interlacing).
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    steps = min(n, max_steps)
    basis = torch.empty(steps + 1, n, dtype=dtype, device=device)
    basis[0] = q / torch.linalg.vector_norm(q)
    alphas: list[float] = []
    betas: list[float] = []
    theta, resid = 0.0, float("inf")
    for j in range(steps):
        w = matvec(basis[j])
        done = basis[: j + 1]
        before = float(torch.linalg.vector_norm(w))
        coef = done @ w
        alphas.append(float(coef[j]))
        w = torch.addmv(w, done.T, coef, alpha=-1)
        beta = float(torch.linalg.vector_norm(w))
        if beta < _REORTH_AGAIN * before:
            w = torch.addmv(w, done.T, done @ w, alpha=-1)
            beta = float(torch.linalg.vector_norm(w))
        last = j + 1 == steps or beta <= 1e-300
        if last or (j + 1) % _CHECK_EVERY == 0:
            theta, resid, gap = _ritz_top(alphas, betas, beta)
            error = min(resid, resid * resid / gap) if gap > 0 else resid
            if last or error <= tol * max(abs(theta), 1e-300):
                break
        betas.append(beta)
        torch.div(w, beta, out=basis[j + 1])
    return theta, resid


def _ritz_top(alphas: list[float], betas: list[float], beta_next: float) -> tuple[float, float, float]:
    """Top eigenvalue of the Lanczos tridiagonal, its Ritz residual |beta_next s_last| and the gap below it."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    vals, vecs = torch.linalg.eigh(t)
    gap = float(vals[-1] - vals[-2]) if len(alphas) > 1 else 0.0
    return float(vals[-1]), abs(beta_next * float(vecs[-1, -1])), gap


def top_eigenvalue(matvec: MatVec, n: int, *, dtype: torch.dtype, device: torch.device | str,
                   dense: torch.Tensor | None = None, tol: float = 1e-8) -> float:
    """Estimate of lambda_max of a symmetric operator (a Ritz value: an estimate, not a bound).

    ``dense``, if given, is the operator as a matrix; below :data:`ESTIMATE_DENSE_BELOW` rows it
    is solved densely, which is faster there.  The default tolerance leaves relative errors far
    below what changes a rule's multipliers (an upper bound is still enforced by the caller).
    """
    if dense is not None and n < ESTIMATE_DENSE_BELOW:
        return float(torch.linalg.eigvalsh(dense)[-1])
    theta, _ = lanczos(matvec, n, dtype=dtype, device=torch.device(device), tol=tol)
    return theta


def confirms_upper(sym: torch.Tensor, theta: float) -> bool:
    """True if theta I - A passes Cholesky, i.e. theta > lambda_max(A)."""
    shifted = -sym
    shifted.diagonal().add_(theta)
    return int(torch.linalg.cholesky_ex(shifted).info) == 0


def lambda_max(sym: torch.Tensor, *, dense_below: int = DENSE_BELOW) -> torch.Tensor:
    """A certified upper bound on lambda_max of the symmetric matrix ``sym`` (0-d tensor, same dtype)."""
    n = sym.shape[0]
    if n < dense_below:
        return torch.tensor(_dense_upper(sym), dtype=sym.dtype, device=sym.device)
    scale = float(sym.abs().max())
    if scale > 0.0:
        unit = sym / scale  # tolerances are relative to the unit-scaled matrix
        theta, _ = lanczos(lambda v: unit @ v, n, dtype=sym.dtype, device=sym.device, tol=1e-12)
        base = scale * theta
        spread = max(abs(base), float(torch.diagonal(sym).abs().max()), torch.finfo(sym.dtype).tiny)
        for slack in _RELATIVE_SLACK:
            candidate = base + slack * spread
            if confirms_upper(sym, candidate):
                return torch.tensor(candidate, dtype=sym.dtype, device=sym.device)
    return torch.tensor(_dense_upper(sym), dtype=sym.dtype, device=sym.device)
