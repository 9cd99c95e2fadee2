"""SDP reference methods: LipSDP-Neuron, LipSDP-Layer and ECLipsE (math.md sections 2, 4.4, 4.5, 12).

Every value returned here is a *certificate*, never a solver objective (math.md 12.3): the
solver only proposes multipliers, and Theorem 1's recursion (:func:`.recursion.run`, with its
Cholesky safety margins) turns them into a valid upper bound.  The solver's own sqrt(rho) is kept
beside it in ``extras["solver_value"]``.

* **LipSDP-Neuron** (Fazlyab et al., NeurIPS 2019, with exact per-neuron slopes [alpha, beta]):
  minimize rho s.t. Q(rho, T) >= 0, T_k = diag(t_k), t_k >= 0, with Q block-tridiagonal::

      Q_00 = rho I + 2 W_1^T T_1 P_1 W_1,    Q_kk = 2 T_k + 2 W_{k+1}^T T_{k+1} P_{k+1} W_{k+1},
      Q_{L-1,L-1} = 2 T_{L-1} - W_L^T W_L,   Q_{k,k-1} = -S_k T_k W_k     (S = A + B, P = A B).

  **LipSDP-Layer** is the same with T_k = tau_k I.  Two exact transformations shrink and
  condition the problem: only W_1^T (.) W_1 enters, so W_1 = U Sigma V^T is replaced by
  U Sigma (PSD size r + n_1 + ... with r = min(n_0, n_1)); and W_k is scaled by c_k, with
  c_1^2 ... c_k^2 = 1 / lambda_max(Gamma_k) from an ECLipsE-Fast pass, which maps a solution
  to one of the original problem by Lambda_k = (c_1^2 ... c_k^2) Lambda'_k (homogeneity (H)).
  The certificate is Theorem 1 at Lambda_k = T_k / rho (certified rounding).

* **ECLipsE** (Xu & Sivaranjani, NeurIPS 2024): per hidden layer, on the normalized Gamma_k and
  the next matrix N, maximize s s.t. [[2 Lambda - s N^T N, Lambda Gamma^{1/2}],
  [Gamma^{1/2} Lambda, I]] >= 0, i.e. M_k(Lambda) >= s N^T N.  With general slopes the lower
  block becomes I + 2 Gamma^{1/2} diag(lambda alpha beta / (alpha + beta)^2) Gamma^{1/2}, which
  makes the constraint exact for math.md 7(ii)'s M_k (see :func:`_eclipse_multipliers`).

The solver's multipliers are offered to the recursion as they are (LipSDP) and then shrunk by
t = 1 - 1e-6, 1 - 1e-5, ..., 0.999, 0.99, ... until its Cholesky accepts them: M(t Lambda) >=
t M(Lambda), strictly on the range of Lambda S W, and first-order solutions sit on (or just past)
the boundary.

If the solver fails, or its multipliers are not accepted at some layer, that layer falls back
to ECLipsE-Fast (SN(1)); the layer's label in ``labels`` then reads ``sn(1)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import (InvalidParameterError, ProblemTooLargeError, UnknownMethodError, UnsupportedSlopesError,
                      require_extra)
from .closed_form import rule_chooser
from . import abs_layer
from .recursion import Candidate, LayerContext, RecursionResult, run, upper_cholesky
from .rules import Rule, lambda_max

Slopes = list[tuple[torch.Tensor, torch.Tensor]]

SDP_NAMES = ("eclipse", "lipsdp-neuron", "lipsdp-layer")
SOLVERS = ("SCS", "CLARABEL")
# Largest PSD block each solver is allowed (memory and time guard).
SIZE_LIMITS = {"SCS": 1500, "CLARABEL": 150}
# Automatic choice: Clarabel (interior point, accurate) up to this PSD size, SCS above it.
CLARABEL_AUTO_MAX = 40
DEFAULT_TOLERANCE = {"SCS": 1e-7, "CLARABEL": 1e-8}
# Certificate above the solver's sqrt(rho) by more than this (relative) triggers one SCS re-solve.
REFINE_GAP = 1e-4
SHRINK = (1 - 1e-6, 1 - 1e-5, 1 - 1e-4, 0.999, 0.99, 0.9, 0.5)
# Solver multipliers below this fraction of the layer's largest one count as zero.
TINY_MULTIPLIER = 1e-9
_FALLBACK = Rule("sn", 1.0)


def solve(name: str, weights: list[torch.Tensor], slopes: Slopes, *, solver: str | None = None,
          tolerance: float | None = None) -> RecursionResult:
    """Certified upper bound from one of the SDP methods ``eclipse``, ``lipsdp-neuron``, ``lipsdp-layer``.

    Parameters
    ----------
    name : str
        The method.
    weights : list of Tensor
        W_1..W_L (float64 or float32, any device; the SDP itself is solved in float64 on CPU).
    slopes : list of (Tensor, Tensor)
        Exact per-neuron slope bounds (alpha_k, beta_k) of each hidden layer.
    solver : {"SCS", "CLARABEL"}, optional
        Default: Clarabel for PSD size <= :data:`CLARABEL_AUTO_MAX`, SCS above.
    tolerance : float, optional
        Solver tolerance in (0, 1) (SCS eps_abs = eps_rel; Clarabel gap and feasibility tolerances);
        default :data:`DEFAULT_TOLERANCE` of the solver.

    Returns
    -------
    RecursionResult
        Theorem 1 evaluated at the solver's multipliers; ``extras`` holds ``solver``,
        ``solver_status``, ``solver_value`` (sqrt(rho) for LipSDP), ``solver_seconds``, ``psd_size``.

    Raises
    ------
    MissingExtraError
        Without cvxpy: ``pip install 'lipcert[sdp]'``.
    ProblemTooLargeError
        If the PSD size exceeds :data:`SIZE_LIMITS` for the solver.
    """
    require_extra("cvxpy", "sdp")
    if name not in SDP_NAMES:
        raise UnknownMethodError(f"unknown SDP method {name!r}; valid: {', '.join(SDP_NAMES)}")
    solver, tolerance = check_solver(solver), check_tolerance(tolerance)
    if any(abs_layer.needs_exact_step(a, b) for a, b in slopes):
        raise UnsupportedSlopesError(f"{name} does not model layers of fixed-slope and |.| neurons (MaxMin, "
                                     "GroupSort, Householder); use the closed forms (method 'combined'), which "
                                     "take the exact step through them")
    if len(weights) == 1:  # no hidden layer: Lip = ||W_1|| exactly, nothing to solve
        return run(weights, slopes, rule_chooser(_FALLBACK))
    live = _live_masks(weights, slopes)
    if any(not bool(m.any()) for m in live) or not bool(weights[-1].any()):  # f is constant
        return run(weights, slopes, rule_chooser(_FALLBACK))
    if name == "eclipse":
        return _eclipse(weights, slopes, live, solver, tolerance)
    return _lipsdp(weights, slopes, live, solver, tolerance, per_neuron=name == "lipsdp-neuron")


def check_solver(solver: str | None) -> str | None:
    """``solver`` in upper case, or None (automatic choice); raises for a solver lipcert does not drive."""
    if solver is None:
        return None
    name = solver.upper() if isinstance(solver, str) else solver
    if name not in SOLVERS:
        raise UnknownMethodError(f"unknown SDP solver {name!r}; valid: {', '.join(SOLVERS)}")
    return name


def check_tolerance(tolerance: float | None) -> float | None:
    """``tolerance`` as a float in (0, 1), or None (the solver's :data:`DEFAULT_TOLERANCE`)."""
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance < 1:
        raise InvalidParameterError(f"tolerance must be a number in (0, 1), got {tolerance!r}")
    return float(tolerance)


# --------------------------------------------------------------------------- shared helpers
def _live_masks(weights: list[torch.Tensor], slopes: Slopes) -> list[torch.Tensor]:
    """Neurons the recursion keeps: rows of S_k W_k (restricted to live inputs) that are nonzero."""
    masks = []
    cols = torch.ones(weights[0].shape[1], dtype=torch.bool, device=weights[0].device)
    for w, (alpha, beta) in zip(weights[:-1], slopes):
        rows = ((alpha + beta)[:, None] * w[:, cols]).abs().sum(dim=1) > 0
        masks.append(rows)
        cols = rows
    return masks


def _pick_solver(solver: str | None, size: int) -> str:
    """The requested solver, or the automatic one for this PSD size; checks the size limit."""
    chosen = solver or ("CLARABEL" if size <= CLARABEL_AUTO_MAX else "SCS")
    if size > SIZE_LIMITS[chosen]:
        raise ProblemTooLargeError(
            f"the SDP has a PSD block of size {size}, over the {chosen} limit of {SIZE_LIMITS[chosen]}; "
            "use a closed-form method (e.g. 'combined') for this network")
    require_extra(chosen.lower(), "sdp")
    return chosen


def _run_solver(problem: Any, solver: str, tolerance: float | None, *, warm: bool = False) -> tuple[str, float]:
    """Solve a cvxpy problem; returns (status, seconds).  Solver errors become status 'error: ...'."""
    import cvxpy as cp

    tol = DEFAULT_TOLERANCE[solver] if tolerance is None else tolerance
    if solver == "SCS":
        opts: dict[str, Any] = {"eps_abs": tol, "eps_rel": tol, "max_iters": 100_000}
    else:
        opts = {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol}
    start = time.perf_counter()
    try:
        problem.solve(solver=getattr(cp, solver), warm_start=warm, **opts)
        status = str(problem.status)
    except cp.error.SolverError as exc:
        status = f"error: {exc}"
    return status, time.perf_counter() - start


def _usable(values: np.ndarray | None) -> bool:
    """Solver multipliers are usable when finite and all above TINY_MULTIPLIER * max."""
    if values is None or not np.all(np.isfinite(values)):
        return False
    top = float(np.max(values))
    return top > 0 and float(np.min(values)) > TINY_MULTIPLIER * top


def _q_vectors(slopes: Slopes, live: list[torch.Tensor]) -> list[np.ndarray]:
    """q_k = alpha beta / (alpha + beta)^2 on the live neurons of each hidden layer (S != 0 there)."""
    qs = []
    for (alpha, beta), mask in zip(slopes, live):
        a, b = alpha[mask].detach().double().cpu().numpy(), beta[mask].detach().double().cpu().numpy()
        qs.append(a * b / (a + b) ** 2)
    return qs


def _general_slope_ok(half: torch.Tensor, q: torch.Tensor, lam: torch.Tensor) -> bool:
    """Pre-check of math.md 7(ii) in the recursion's normalized units, with H = Gamma^{1/2}.

    X = I + 2 H diag(q lambda) H > 0 and M = 2 Lambda - Lambda H X^{-1} H Lambda > 0, each with
    a diagonal-relative margin 10x the driver's.  (X_{k-1} and this X share their nonzero spectrum shifts,
    and S W X_{k-1}^{-1} W^T S equals H X^{-1} H, by the push-through identity.)  The driver
    would halve a rejected lambda; screening first lets the finer shrink factors be tried.
    """
    delta = 40 * len(lam) * torch.finfo(half.dtype).eps
    x = torch.eye(len(lam), dtype=half.dtype, device=half.device) + 2 * half @ ((q * lam)[:, None] * half)
    rx = upper_cholesky(x - torch.diag(delta * torch.diagonal(x)))
    if rx is None:
        return False
    z = torch.linalg.solve_triangular(rx.T, half, upper=False)
    m = torch.diag(2 * lam) - lam[:, None] * (z.T @ z) * lam[None, :]
    return upper_cholesky(m - torch.diag(delta * torch.diagonal(m))) is not None


def _candidates(label: str, lam: torch.Tensor | None, ctx: LayerContext, shrink: tuple[float, ...],
                q: np.ndarray) -> Iterator[Candidate]:
    """``lam`` scaled by each factor in ``shrink``, then the SN(1) fallback chain.

    Where some alpha beta < 0 the scaled candidates are screened by :func:`_general_slope_ok`.
    """
    if lam is not None and lam.shape == ctx.gamma.shape[:1] and q.shape == lam.shape:
        negative = bool(np.any(q < 0))
        if negative:
            evals, evecs = torch.linalg.eigh(ctx.gamma)
            half = (evecs * evals.clamp(min=0).sqrt()[None, :]) @ evecs.T
            q_t = torch.from_numpy(q).to(ctx.gamma)
        for t in shrink:
            if not negative or _general_slope_ok(half, q_t, lam * t):
                yield label, lam * t
    yield from rule_chooser(_FALLBACK)(ctx)


# --------------------------------------------------------------------------- LipSDP
def _sn_log_scales(weights: list[torch.Tensor], slopes: Slopes) -> list[float]:
    """log C_k, k = 1..L: C_k = 1/lambda_max(Gamma_k) of an ECLipsE-Fast pass, C_L = 1/L_fast^2."""
    logs: list[float] = []

    def choose(ctx: LayerContext) -> Iterator[Candidate]:
        logs.append(-(ctx.log_scale + math.log(float(lambda_max(ctx.gamma)))))
        yield from rule_chooser(_FALLBACK)(ctx)

    fast = run(weights, slopes, choose)
    return logs + [-2 * math.log(fast.value)]


def _lipsdp_problem(ws: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]], per_neuron: bool
                    ) -> tuple[Any, Any, list[Any]]:
    """cvxpy problem min rho s.t. Q(rho, T) >= 0 (math.md section 2); returns (problem, rho, [t_k])."""
    import cvxpy as cp

    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(n, nonneg=True) if per_neuron else cp.Variable(nonneg=True) * np.ones(n)
          for n in dims[1:]]
    hidden = len(ws) - 1
    blocks: list[list[Any]] = [[np.zeros((dims[i], dims[j])) for j in range(hidden + 1)] for i in range(hidden + 1)]
    diag: list[Any] = [rho * np.eye(dims[0])] + [2 * cp.diag(t) for t in ts]
    for k in range(1, hidden + 1):  # hidden layer k: W_k = ws[k - 1], multipliers ts[k - 1]
        alpha, beta = slopes[k - 1]
        w, t = ws[k - 1], ts[k - 1]
        if np.any(alpha * beta != 0):
            diag[k - 1] = diag[k - 1] + 2 * w.T @ cp.diag(cp.multiply(alpha * beta, t)) @ w
        off = -cp.diag(cp.multiply(alpha + beta, t)) @ w
        blocks[k][k - 1] = off
        blocks[k - 1][k] = off.T
    diag[hidden] = diag[hidden] - ws[-1].T @ ws[-1]
    for k in range(hidden + 1):
        blocks[k][k] = diag[k]
    q = cp.bmat(blocks)
    problem = cp.Problem(cp.Minimize(rho), [(q + q.T) / 2 >> 0])
    return problem, rho, ts


def _prepare(weights: list[torch.Tensor], slopes: Slopes, live: list[torch.Tensor]
             ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]], list[float], int]:
    """Live neurons only, W_k scaled by c_k (SN(1) conditioning), W_1 input-reduced.

    Returns the float64 numpy weights and slopes of the SDP, log C_k (k = 1..L) and n_0.
    """
    ws_t = [w.detach().double().cpu() for w in weights]
    cols = torch.ones(ws_t[0].shape[1], dtype=torch.bool)
    pruned: list[torch.Tensor] = []
    pruned_slopes: Slopes = []
    for k, mask in enumerate(m.cpu() for m in live):
        pruned.append(ws_t[k][mask][:, cols])
        pruned_slopes.append((slopes[k][0].detach().double().cpu()[mask], slopes[k][1].detach().double().cpu()[mask]))
        cols = mask
    pruned.append(ws_t[-1][:, cols])
    log_c = _sn_log_scales(pruned, pruned_slopes)
    prev = 0.0
    ws: list[np.ndarray] = []
    for w, lc in zip(pruned, log_c):
        ws.append(w.numpy() * math.exp((lc - prev) / 2))
        prev = lc
    if ws[0].shape[1] > ws[0].shape[0]:  # exact input reduction: W_1 = U Sigma V^T -> U Sigma
        u, sig, _ = np.linalg.svd(ws[0], full_matrices=False)
        ws[0] = u * sig[None, :]
    return ws, [(a.numpy(), b.numpy()) for a, b in pruned_slopes], log_c, pruned[0].shape[1]


def _lipsdp(weights: list[torch.Tensor], slopes: Slopes, live: list[torch.Tensor], solver: str | None,
            tolerance: float | None, *, per_neuron: bool) -> RecursionResult:
    """LipSDP-Neuron / -Layer on the prepared network, certified by Theorem 1 at Lambda_k = T_k / rho.

    With SCS at its default tolerance, a certificate more than :data:`REFINE_GAP` above the
    solver's sqrt(rho) triggers one warm-started re-solve at tolerance / 100; the smaller of the two
    certificates is returned (both are valid).
    """
    label = "lipsdp-neuron" if per_neuron else "lipsdp-layer"
    widths = [int(m.sum()) for m in live]
    size = min(weights[0].shape[1], widths[0]) + sum(widths)  # after the input reduction
    chosen = _pick_solver(solver, size)
    ws, sdp_slopes, log_c, n0 = _prepare(weights, slopes, live)
    qs = _q_vectors(slopes, live)
    problem, rho, ts = _lipsdp_problem(ws, sdp_slopes, per_neuron)

    def attempt(tol: float, warm: bool) -> RecursionResult:
        status, seconds = _run_solver(problem, chosen, tol, warm=warm)
        ok = status in ("optimal", "optimal_inaccurate") and rho.value is not None and float(rho.value) > 0
        rho_val = float(rho.value) if ok else math.nan
        lams: list[torch.Tensor | None] = []
        for t in ts:
            values = np.asarray(t.value, dtype=np.float64).reshape(-1) if ok else None
            lams.append(torch.from_numpy(values / rho_val) if values is not None and _usable(values) else None)

        def choose(ctx: LayerContext) -> Iterator[Candidate]:
            # Lambda'_k = T'_k / rho' (scaled net); true Lambda_k = C_k Lambda'_k; the recursion
            # wants lambda_hat = lambda_true * exp(log_scale).
            lam = lams[ctx.index - 1]
            scaled = None if lam is None else (lam * math.exp(log_c[ctx.index - 1] + ctx.log_scale)).to(ctx.gamma)
            yield from _candidates(label, scaled, ctx, (1.0,) + SHRINK, qs[ctx.index - 1])

        result = run(weights, slopes, choose)
        solver_value = math.sqrt(rho_val * math.exp(-log_c[-1])) if ok else None
        if not ok:
            result.notes.append(f"{chosen} did not solve the SDP ({status}); every layer fell back to sn(1)")
        result.extras.update(solver=chosen, solver_status=status, solver_value=solver_value, solver_tolerance=tol,
                             solver_seconds=seconds, psd_size=size, input_reduced=(n0, ws[0].shape[1]))
        return result

    tol = DEFAULT_TOLERANCE[chosen] if tolerance is None else tolerance
    best = attempt(tol, False)
    if chosen == "SCS" and tolerance is None and _gap(best) > REFINE_GAP:
        second = attempt(tol / 100, True)
        second.extras["solver_seconds"] += best.extras["solver_seconds"]
        if second.value <= best.value:
            best = second
        else:
            best.extras["solver_seconds"] = second.extras["solver_seconds"]
    if _gap(best) > 1e-3 and best.extras["solver_value"] is not None:
        best.notes.append(f"the solver's multipliers certify {best.value:.6g}, its sqrt(rho) is "
                          f"{best.extras['solver_value']:.6g}; a tighter tolerance may close the gap")
    return best


def _gap(result: RecursionResult) -> float:
    """Relative excess of the certificate over the solver's sqrt(rho) (0 if the solver failed)."""
    value = result.extras["solver_value"]
    return 0.0 if value is None else result.value / value - 1


# --------------------------------------------------------------------------- ECLipsE
def _eclipse_multipliers(gamma: np.ndarray, nxt: np.ndarray, q: np.ndarray, solver: str,
                         tolerance: float | None) -> tuple[np.ndarray | None, str, float]:
    """Solve ECLipsE's per-layer SDP (math.md 4.4) in the recursion's normalized units.

    maximize s s.t. [[2 Lambda - s N^T N, Lambda G^{1/2}], [G^{1/2} Lambda, I + 2 G^{1/2} diag(q lambda) G^{1/2}]] >= 0
    with G = S W M^{-1} W^T S and q = alpha beta / (alpha + beta)^2.  Its Schur complement is
    M_k(Lambda) - s N^T N with the exact general-slope M_k of math.md 7(ii) (by the push-through
    identity, X_{k-1} enters only through G); for [0, beta] slopes (q = 0) it is ECLipsE's LMI.
    """
    import cvxpy as cp

    n = gamma.shape[0]
    evals, evecs = np.linalg.eigh(gamma + 1e-10 * np.eye(n))
    half = (evecs * np.sqrt(np.maximum(evals, 0.0))[None, :]) @ evecs.T
    half = (half + half.T) / 2
    norm = float(np.linalg.norm(nxt, 2))
    if norm == 0.0:  # nothing downstream: any lambda serves, leave it to the fallback
        return None, "skipped: zero next matrix", 0.0
    ntn = (nxt.T @ nxt) / norm**2  # N / ||N||: s is rescaled, lambda is not
    lam = cp.Variable(n, nonneg=True)
    s = cp.Variable()
    big_lam = cp.diag(lam)
    lower: Any = np.eye(n)
    if np.any(q != 0):
        lower = lower + 2 * half @ cp.diag(cp.multiply(q, lam)) @ half
    mat = cp.bmat([[2 * big_lam - s * ntn, big_lam @ half], [half @ big_lam, lower]])
    problem = cp.Problem(cp.Maximize(s), [(mat + mat.T) / 2 >> 0, s >= 1e-20])
    status, seconds = _run_solver(problem, solver, tolerance)
    ok = status in ("optimal", "optimal_inaccurate") and s.value is not None and float(s.value) > 0
    values = np.asarray(lam.value, dtype=np.float64) if ok else None
    return (values if _usable(values) else None), status, seconds


def _eclipse(weights: list[torch.Tensor], slopes: Slopes, live: list[torch.Tensor], solver: str | None,
             tolerance: float | None) -> RecursionResult:
    """ECLipsE: one small SDP per hidden layer inside the recursion; failed layers fall back to SN(1)."""
    largest = 2 * max(int(m.sum()) for m in live)
    chosen = [_pick_solver(solver, 2 * int(m.sum())) for m in live]
    qs = _q_vectors(slopes, live)
    statuses: list[str] = []
    seconds = 0.0

    def choose(ctx: LayerContext) -> Iterator[Candidate]:
        nonlocal seconds
        gamma = ctx.gamma.detach().double().cpu().numpy()
        nxt = ctx.next_weight.detach().double().cpu().numpy()
        q = qs[ctx.index - 1]
        values = None
        if q.shape == gamma.shape[:1]:
            values, status, secs = _eclipse_multipliers(gamma, nxt, q, chosen[ctx.index - 1], tolerance)
            statuses.append(status)
            seconds += secs
        lam = None if values is None else torch.from_numpy(values).to(ctx.gamma)
        yield from _candidates("eclipse", lam, ctx, SHRINK, q)

    result = run(weights, slopes, choose)
    bad = [f"{i + 1} ({st})" for i, st in enumerate(statuses)
           if st not in ("optimal", "optimal_inaccurate") and not st.startswith("skipped")]
    if bad:
        result.notes.append(f"ECLipsE SDP failed at layers {', '.join(bad)}")
    result.extras.update(solver=chosen[0] if len(set(chosen)) == 1 else sorted(set(chosen)),
                         solver_status=statuses, solver_seconds=seconds, psd_size=largest)
    return result
