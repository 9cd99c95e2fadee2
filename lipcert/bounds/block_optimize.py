"""L-BFGS over the multipliers of one residual block, feasible by construction (docs/decisions.md 30).

As in :mod:`.optimize` (decisions 18), lambda = c u / top(U^1/2 Gamma U^1/2) with u_i = exp(phi_i) / Gamma_ii,
c = 2 sigmoid(psi) and top = t log sum exp(mu / t) >= lambda_max (t = 0.01 lambda_max): then
lambda_max(Lambda^1/2 Gamma Lambda^1/2) <= c < 2, so M = 2 Lambda - Lambda Gamma Lambda > 0 at every
iterate.  The objective is lambda_max(E_next) of :mod:`.block_form`; the iterates seen are certified
afterwards by :func:`.block_form.next_form` (Cholesky with margin, certified lambda_max) and the result is
never above the start.
"""

from __future__ import annotations

import math

import torch

from . import block_form as bf

ITERATIONS = 60
_C_MAX = 2 * (1 - 1e-7)
_KEEP = 4  # best iterates (by objective) certified at the end


def _smooth_top(mat: torch.Tensor) -> torch.Tensor:
    mu = torch.linalg.eigvalsh((mat + mat.mT) / 2)
    t = 0.01 * float(mu[-1].detach().abs().clamp(min=1e-300))
    return t * torch.logsumexp(mu / t, dim=0)


def optimize_block(st: bf.Stage, start: bf.Choice, iterations: int = ITERATIONS) -> bf.Choice:
    """Refine ``start`` (a feasible choice for this block) by L-BFGS over (phi, psi); never above ``start``."""
    scale = float(torch.diagonal(st.gamma).max())
    unit = (st.gamma / scale).detach()
    d = torch.diagonal(unit)
    u0 = start.lam * scale
    root0 = u0.sqrt()
    c0 = min(float(_smooth_top(root0[:, None] * unit * root0[None, :])), _C_MAX)
    phi = torch.log(u0 * d).clone().requires_grad_(True)
    psi = torch.tensor(math.log(c0 / (2 - c0)), dtype=unit.dtype, requires_grad=True)
    seen: list[tuple[float, torch.Tensor]] = []

    def multipliers() -> torch.Tensor:
        u = torch.exp(phi) / d
        root = u.sqrt()
        return 2 * torch.sigmoid(psi) * u / _smooth_top(root[:, None] * unit * root[None, :]) / scale

    def closure() -> torch.Tensor:
        opt.zero_grad()
        lam = multipliers()
        c = torch.diag(2 / lam) - st.gamma
        low, info = torch.linalg.cholesky_ex((c + c.T) / 2)
        if int(info) != 0:
            penalty = phi.sum() * 0 + psi * 0 + 1e3 * start.value
            penalty.backward()
            return penalty
        k = (st.cross * lam[None, :] + st.outer) / lam[None, :]   # K Lambda^-1
        y = torch.linalg.solve_triangular(low, k.T, upper=False)
        form = st.base + y.T @ y
        value = torch.linalg.eigvalsh((form + form.T) / 2)[-1]
        seen.append((float(value.detach()), lam.detach().clone()))
        value.backward()
        return value

    opt = torch.optim.LBFGS([phi, psi], lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)
    opt.step(closure)
    best = start
    for _, lam in sorted(seen, key=lambda t: t[0])[:_KEEP]:
        form = bf.next_form(st, lam)
        if form is None:
            continue
        value = bf.top(form)
        if value < best.value:
            best = bf.Choice("optimized", lam, form, value)
    return best
