"""The residual-block SDP (optional extra ``sdp``): the optimum of the block LMI over Lambda and rho^2.

minimize t = rho^2 over t, lambda >= 0 such that, on the canonical block (S', V, G) of
:mod:`.block_form` (the loop transformation is exact, so this is the LMI with the exact slopes)::

    [[t I - S'^T S',            -(S'^T G + V^T Lambda)],
     [-(G^T S' + Lambda V),      2 Lambda - G^T G    ]]  >= 0.

As in :mod:`.sdp`, the value returned is a certificate, never the solver's objective: the solver's
lambda / t, shrunk by the factors of :data:`.sdp.SHRINK` until Cholesky accepts it, is evaluated by
:func:`.block_form.next_form`; ``extras["solver_value"]`` keeps sqrt(t).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import require_extra
from ..rounding import certified_root
from . import block_form as bf
from .residual_block import BlockBound, _checked, block_constant
from .sdp import SHRINK, _pick_solver, _run_solver, check_solver, check_tolerance


def block_sdp(shortcut: torch.Tensor | None, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
              beta: torch.Tensor, *, solver: str | None = None, tolerance: float | None = None) -> BlockBound:
    """Certified value of the block LMI's optimum (cvxpy; Clarabel up to PSD size 40, SCS above).

    Falls back to :func:`.residual_block.block_constant` ("combined") when the solver fails or its
    multipliers are not accepted; ``extras``: solver, solver_status, solver_value, solver_seconds, psd_size.
    """
    require_extra("cvxpy", "sdp")
    import cvxpy as cp

    start = time.perf_counter()
    solver, tolerance = check_solver(solver), check_tolerance(tolerance)
    s, w, g, alpha, beta = _checked(shortcut, inner, outer, alpha, beta)
    block = bf.canonical(s, w, g, alpha, beta)
    fallback = block_constant(s, w, g, alpha, beta)
    m, n = block.inner.shape
    if m == 0:
        return fallback
    size = n + m
    chosen = _pick_solver(solver, size)
    unit = fallback.value  # condition: the optimum of the scaled problem is about 1
    s_np, v_np, g_np = (x.numpy() / d for x, d in ((block.shortcut, unit), (block.inner, 1.0), (block.outer, unit)))
    t = cp.Variable(nonneg=True)
    lam = cp.Variable(m, nonneg=True)
    off = -(s_np.T @ g_np + v_np.T @ cp.diag(lam))
    mat = cp.bmat([[t * np.eye(n) - s_np.T @ s_np, off], [off.T, 2 * cp.diag(lam) - g_np.T @ g_np]])
    problem = cp.Problem(cp.Minimize(t), [(mat + mat.T) / 2 >> 0])
    status, seconds = _run_solver(problem, chosen, tolerance)
    extras = {"solver": chosen, "solver_status": status, "solver_seconds": seconds, "psd_size": size,
              "solver_value": None}
    rho2 = float(np.asarray(t.value)) if t.value is not None else math.nan
    ok = status in ("optimal", "optimal_inaccurate") and rho2 > 0
    if ok and lam.value is not None and np.all(np.isfinite(lam.value)):
        extras["solver_value"] = math.sqrt(rho2) * unit
        per_unit = torch.from_numpy(np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0) / rho2)
        st = bf.stage(block)
        best = None
        for factor in (1.0,) + SHRINK:
            form = bf.next_form(st, per_unit * factor)
            if form is not None:
                value = bf.top(form)
                if best is None or value < best[0]:
                    best = (value, per_unit * factor, form)
        if best is not None:
            value = float(certified_root(best[0], 0.0))
            lam_full = torch.zeros_like(alpha)
            lam_full[block.live] = best[1] * best[0]
            extras.update(raw=math.sqrt(best[0]), form=best[2], slopes="exact")
            return BlockBound(value, "sdp", "sdp", {"sdp": value, "combined": fallback.value}, lam_full,
                              time.perf_counter() - start, extras)
    extras.update(raw=fallback.extras["raw"], form=fallback.extras["form"], slopes=fallback.extras["slopes"])
    return BlockBound(fallback.value, "sdp", f"combined (solver: {status})", {"combined": fallback.value},
                      fallback.multipliers, time.perf_counter() - start, extras)
