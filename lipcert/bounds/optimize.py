"""First-order optimization of the Theorem 1 multipliers (method ``optimized``; math.md sections 3, 5, 7(ii)).

By Theorem 1 every positive diagonal choice of Lambda_1..Lambda_{L-1} with all M_k > 0 certifies
Lip(c^T f) <= sqrt(c^T G_L c), G_L = W_L M_{L-1}^{-1} W_L^T, and optimizing over all of them is
LipSDP-Neuron.  Starting from the best closed-form certificate (``combined``), this module improves the
multipliers by L-BFGS steps on

    log c^T G_L c                                   (a margin direction c), or
    tau log sum_i (mu_i)^(1/tau)  >= log lambda_max(G_L)   (mu_i the eigenvalues of G_L; the full vector),

with gradients from torch autograd through the float64 recursion itself (:func:`.recursion.run`).
The multipliers are not the variables: at hidden layer k the chooser builds them from the Gamma_k
it is handed, with a shape phi_k (one per live neuron) and a margin psi_k (one per layer),

    u_i = exp(phi_i) / Gamma_ii,   lambda = c_k u / top(U^1/2 Gamma_k U^1/2),   c_k = 2 sigmoid(psi_k),

with top a smooth upper bound on lambda_max (:func:`top_eigenvalue`), so lambda_max(Lambda^1/2 Gamma_k
Lambda^1/2) <= c_k < 2: every layer is feasible by construction (up to the Cholesky margins), at a
distance from the boundary set by c_k alone, whatever the earlier layers did.  Fixed multipliers (or
their logs) re-evaluate ill-conditionedly on deep nets: a layer at lambda_max(Lambda^1/2 Gamma
Lambda^1/2) = c amplifies changes of Gamma along its top direction by about c / (2 - c) in M_k^{-1},
hence in Gamma_{k+1}, so the sensitivity to the first layers grows geometrically with depth
(docs/decisions.md).  Every objective evaluation *is* a run of the certified
recursion, with its Cholesky safety margins and log-space scaling: a step whose Cholesky fails at
some layer is infeasible and is shrunk (backtracking), so every accepted iterate is a certificate
and stopping at any iteration is safe.  The sublevel sets of the bound in lambda are convex (1/L^2
is the largest sigma with Q(1/sigma, Lambda/sigma) / (1/sigma) >= 0, a linear matrix inequality in
(lambda, sigma)), and the iterates approach LipSDP-Neuron.  Its optimum often sits where some M_k
is singular (M_{L-1} along the null space of W_L, for instance), so the steps minimize objective +
mu * barrier with barrier = -sum_k log(det C_k / prod diag C_k), C_k = 2 Lambda_k^{-1} - Gamma_k,
for mu = 1e-2 down to 0 (path following; each stage warm-starts the next and ends once its
objective changes by less than max(1e-5, mu) over 5 iterations), which keeps early iterates off the
boundary where the recursion's margins would stall the line search.  The descent itself (barrier
continuation, L-BFGS with one initial scale per hidden layer, backtracking) is :mod:`.lbfgs`.

The certificate uses the closed forms' slopes (alpha >= 0 relaxed to 0, math.md 7(ii)); negative
alpha (SiLU, GELU) and per-neuron slopes go through the recursion's general-slope test.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InfeasibleCertificateError, InvalidParameterError, ShapeMismatchError
from . import abs_layer, closed_form
from .lbfgs import Point, minimize
from .recursion import Candidate, LayerContext, RecursionResult, run
from .result import Gram
from .rules import DEFAULT_RULE_SET, Rule

Slopes = list[tuple[torch.Tensor, torch.Tensor]]

DEFAULT_ITERATIONS = 100
DEFAULT_PAIR_ITERATIONS = 20
OPTIONS = ("iterations", "seconds", "direction", "pairs", "pair_iterations", "progress")
_TAU = 0.01             # temperature of the smooth lambda_max surrogate (log units)
_LABEL = "optimized"
_DENSE_TOP = 512        # lambda_max of U^1/2 Gamma U^1/2 by eigvalsh up to this width, power iteration above
_POWER_STEPS = 60
_SOFT_TOP = 0.01        # temperature of the smooth top eigenvalue, relative to lambda_max
_MAX_START_C = 1.999


class _Problem:
    """The objective theta -> log bound through :func:`run`, on the live neurons of each hidden layer."""

    def __init__(self, weights: list[torch.Tensor], slopes: Slopes, sizes: list[int],
                 direction: torch.Tensor | None) -> None:
        self.weights = weights
        self.slopes = slopes
        self.sizes = sizes
        self.direction = direction
        self.mu = 0.0
        self.evaluations = 0

    def chooser(self, theta: torch.Tensor, barrier: list[torch.Tensor] | None = None):
        """Chooser building layer k's multipliers from (phi_k, psi_k) (:func:`scaled`); appends each layer's
        barrier term to ``barrier``.

        ``theta`` is phi_1..phi_{L-1} (``sizes`` entries each) followed by psi_1..psi_{L-1}.  With negative
        alpha the recursion tests 2 D - S W X^{-1} W^T S, which is below 2 D - Gamma; the barrier then only
        steers, and feasibility is still decided by the recursion.
        """
        parts = torch.split(theta, self.sizes + [len(self.sizes)])
        margins = parts[-1]

        def choose(ctx: LayerContext) -> Iterator[Candidate]:
            part = parts[ctx.index - 1]
            if part.shape != ctx.gamma.shape[:1]:
                raise ShapeMismatchError(f"layer {ctx.index}: {part.shape[0]} multipliers for "
                                         f"{ctx.gamma.shape[0]} live neurons")
            yield _LABEL, scaled(part, margins[ctx.index - 1], ctx, barrier)

        return choose

    def blocks(self) -> torch.Tensor:
        """Hidden layer of every parameter (phi_k and psi_k belong to layer k): the blocks of the L-BFGS scaling."""
        layers = torch.arange(len(self.sizes))
        return torch.cat([layers.repeat_interleave(torch.tensor(self.sizes, dtype=torch.long)), layers])

    def value(self, result: RecursionResult) -> float:
        """Certified bound of one pass: sqrt(lambda_max(G_L)) or sqrt(c^T G_L c), as :class:`.result.Gram` reads it."""
        if self.direction is None:
            return result.value
        return Gram(result.gram, result.log_scale).along(self.direction.detach().cpu().numpy())

    def surrogate(self, result: RecursionResult) -> torch.Tensor:
        """The smooth objective (log units) whose gradient drives the steps."""
        gram = result.gram
        if self.direction is not None:
            return torch.log(self.direction @ gram @ self.direction) + result.log_scale
        if gram.shape[0] == 1:
            return torch.log(gram[0, 0]) + result.log_scale
        eig = torch.linalg.eigvalsh(gram)
        logs = torch.log(eig.clamp(min=float(eig[-1]) * 1e-30))  # G_L is PSD; rounding can make tiny ones negative
        return _TAU * torch.logsumexp(logs / _TAU, dim=0) + result.log_scale

    def evaluate(self, theta: torch.Tensor) -> Point | None:
        """The iterate at theta, or None if it is infeasible (a Cholesky failed) or not finite.

        A trial step far out (huge or non-finite multipliers) can make an eigensolver fail to converge
        before any Cholesky test: that trial is infeasible too, and the line search shrinks it.
        """
        self.evaluations += 1
        var = theta.detach().clone().requires_grad_(True)
        barrier: list[torch.Tensor] = []
        try:
            with warnings.catch_warnings():  # run() reads its layer scales as floats: constants, by design
                warnings.filterwarnings("ignore", "Converting a tensor with requires_grad", UserWarning)
                result = run(self.weights, self.slopes, self.chooser(var, barrier if self.mu > 0 else None))
        except (InfeasibleCertificateError, torch.linalg.LinAlgError):
            return None
        objective = self.surrogate(result)
        if barrier:
            objective = objective - self.mu * torch.stack(barrier).sum()
        if not bool(torch.isfinite(objective)):
            return None
        detached = RecursionResult(result.gram.detach(), result.log_scale, [], [])
        return Point(var.detach(), float(objective.detach()), self.value(detached), (objective, var))


def offered(theta: torch.Tensor, ctx: LayerContext, barrier: list[torch.Tensor] | None) -> torch.Tensor:
    """Multipliers exp(theta) (true units) in the normalized units of ``ctx``; appends the layer's barrier
    term log det(2 Lambda^-1 - Gamma) - sum log diag to ``barrier`` when one is given."""
    lam = torch.exp(theta + ctx.log_scale)
    if barrier is not None:
        barrier.append(log_det_ratio(torch.diag(2 / lam) - ctx.gamma))
    return lam


def scaled(phi: torch.Tensor, psi: torch.Tensor, ctx: LayerContext, barrier: list[torch.Tensor] | None
           ) -> torch.Tensor:
    """Multipliers c u / top(U^1/2 Gamma U^1/2) with u_i = exp(phi_i) / Gamma_ii and c = 2 sigmoid(psi)
    (in any units: lambda scales like 1 / Gamma); appends the layer's barrier term like :func:`offered`.

    Gamma_k depends on the earlier layers' multipliers, and this dependence is differentiated through.
    """
    u = torch.exp(phi) / torch.diagonal(ctx.gamma)
    lam = 2 * torch.sigmoid(psi) * u / top_eigenvalue(u, ctx.gamma)
    if barrier is not None:
        barrier.append(log_det_ratio(torch.diag(2 / lam) - ctx.gamma))
    return lam


def top_eigenvalue(u: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """A smooth upper bound on lambda_max(U^1/2 Gamma U^1/2), differentiable.

    Up to width :data:`_DENSE_TOP`: t log sum_i exp(mu_i / t) over its eigenvalues mu_i, t = 0.01 mu_max
    (>= mu_max, so c / top <= c / mu_max keeps c < 2 feasible; lambda_max itself is not differentiable
    where the top eigenvalue is multiple, which is typical near the optimum).  Above: the Rayleigh
    quotient at a power-iteration vector (an estimate below lambda_max only moves c closer to 2, and
    the recursion's Cholesky still decides feasibility).
    """
    root = torch.sqrt(u)
    mat = root[:, None] * gamma * root[None, :]
    if mat.shape[0] <= _DENSE_TOP:
        eig = torch.linalg.eigvalsh(mat)
        t = _SOFT_TOP * float(eig[-1])
        return t * torch.logsumexp(eig / t, dim=0)
    with torch.no_grad():
        v = torch.ones_like(u) / math.sqrt(u.shape[0])
        for _ in range(_POWER_STEPS):
            v = mat @ v
            v = v / v.norm()
    return v @ (mat @ v)


def log_det_ratio(mat: torch.Tensor) -> torch.Tensor:
    """log det(mat) - sum_i log mat_ii (<= 0, -inf on the boundary): a barrier blind to diagonal scaling."""
    low, info = torch.linalg.cholesky_ex((mat + mat.T) / 2)
    if int(info) != 0:
        return torch.tensor(-math.inf, dtype=mat.dtype, device=mat.device)
    return 2 * torch.log(torch.diagonal(low)).sum() - torch.log(torch.diagonal(mat)).sum()


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of the optimizer, checked: known names, iteration counts integers >= 0, seconds >= 0."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidParameterError(f"unknown option(s) {', '.join(unknown)} for method 'optimized'; "
                                    f"valid: {', '.join(OPTIONS)}")
    out = dict(options)
    for key in ("iterations", "pair_iterations"):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 0):
            raise InvalidParameterError(f"{key} must be an integer >= 0, got {out[key]!r}")
    if out.get("seconds") is not None and not (isinstance(out["seconds"], int | float) and out["seconds"] >= 0):
        raise InvalidParameterError(f"seconds must be a number >= 0, got {out['seconds']!r}")
    return out


def _as_direction(c: Any, outputs: int, like: torch.Tensor) -> torch.Tensor:
    vec = torch.as_tensor(np.asarray(c.detach().cpu() if isinstance(c, torch.Tensor) else c, dtype=np.float64))
    vec = vec.reshape(-1).to(like)
    if vec.shape != (outputs,):
        raise ShapeMismatchError(f"direction must have {outputs} entries (one per output), got {vec.shape[0]}")
    if not bool(torch.isfinite(vec).all()) or not bool((vec != 0).any()):
        raise InvalidParameterError("direction must be finite and nonzero")
    return vec


def optimized(weights: Sequence[torch.Tensor], slopes: Slopes, rules: Sequence[Rule] = DEFAULT_RULE_SET,
              options: Mapping[str, Any] | None = None) -> dict[str, RecursionResult]:
    """Closed-form passes, then the optimized certificate(s); the caller reports the minimum.

    Parameters
    ----------
    weights : list of Tensor
        W_1..W_L in float64.
    slopes : list of (Tensor, Tensor)
        Exact per-neuron slope bounds; the certificate relaxes alpha >= 0 to 0 like the closed forms.
    rules : sequence of Rule
        Rule set of the starting ``combined`` bound.
    options : mapping, optional
        ``iterations`` (default 100): L-BFGS iterations for the full vector (or the direction);
        ``seconds``: wall-time budget of the whole optimization (None: unlimited);
        ``direction``: optimize Lip(c^T f) for this output direction c instead of Lip(f);
        ``pairs``: also optimize every margin direction e_i - e_j (i < j), warm-started from the
        full-vector optimum, with ``pair_iterations`` (default 20) iterations each;
        ``progress``: tqdm progress bar (default: when stderr is a terminal).

    Returns
    -------
    dict of str to RecursionResult
        ``"optimized"`` first (its ``extras`` hold the ``trajectory`` of certified values per
        iteration, ``trajectory_seconds`` (when each was reached, counted from the call), ``start``,
        ``start_rule``, ``iterations``, ``evaluations``, ``seconds``), then
        ``"optimized:i-j"`` for the pairs, then every closed-form pass.  Each is a valid certificate
        for all outputs; the optimized ones are never above their starting closed-form value.
    """
    opts = check_options(options or {})
    start_time = time.perf_counter()
    seconds = opts.get("seconds")
    deadline = None if seconds is None else start_time + float(seconds)
    progress = opts.get("progress")
    ws = list(weights)
    relaxed = closed_form.closed_form_slopes(slopes)
    passes = closed_form.combined(ws, slopes, rules)
    outputs = ws[-1].shape[0]
    direction = None if opts.get("direction") is None else _as_direction(opts["direction"], outputs, ws[-1])
    problem = _Problem(ws, relaxed, [], direction)

    # Start from the best pass that carries multipliers at every hidden layer (naive carries none).
    candidates = {k: r for k, r in passes.items()
                  if r.multipliers and len(r.multipliers) == len(ws) - 1 and all(bool((m > 0).any()) for m in r.multipliers)}
    if any(abs_layer.needs_exact_step(a, b) for a, b in relaxed):
        candidates = {}  # fixed-slope/|.| layers take the exact step, which has no multipliers to optimize
    if not candidates:  # no hidden layer, a constant network or |.| layers: nothing to optimize
        best = min(passes, key=lambda k: passes[k].value)
        return {_LABEL: _annotated(passes[best], _LABEL, best, [problem.value(passes[best])], 0, start_time),
                **passes}
    start_rule = min(candidates, key=lambda k: problem.value(candidates[k]))
    origin = candidates[start_rule]
    masks = [m > 0 for m in origin.multipliers]  # the live neurons the recursion keeps
    problem.sizes = [int(m.sum()) for m in masks]
    theta0 = _scaled_start(ws, relaxed, next(rule for rule in rules if rule.name == start_rule))
    iterations = opts.get("iterations", DEFAULT_ITERATIONS)
    clock: list[float] = []
    best_point, trajectory = (None, []) if theta0 is None else minimize(problem, theta0, iterations, deadline,
                                                                        progress, _LABEL, blocks=problem.blocks(),
                                                                        clock=clock)
    out = {_LABEL: _finish(problem, best_point, origin, _LABEL, start_rule, trajectory, start_time)}
    out[_LABEL].extras["trajectory_seconds"] = [t - start_time for t in clock]
    if opts.get("pairs") and outputs > 1 and direction is None:
        warm = theta0 if best_point is None else best_point.theta
        if warm is None:
            return {**out, **passes}
        for i, j in itertools.combinations(range(outputs), 2):
            if deadline is not None and time.perf_counter() > deadline:
                break
            c = torch.zeros(outputs, dtype=ws[-1].dtype, device=ws[-1].device)
            c[i], c[j] = 1.0, -1.0
            pair = _Problem(ws, relaxed, problem.sizes, c)
            name = f"{_LABEL}:{i}-{j}"
            pair_best, pair_trajectory = minimize(pair, warm, opts.get("pair_iterations", DEFAULT_PAIR_ITERATIONS),
                                                   deadline, progress, name, blocks=pair.blocks())
            out[name] = _finish(pair, pair_best, origin, name, start_rule, pair_trajectory, start_time)
    out.update(passes)
    return out


def _scaled_start(weights: list[torch.Tensor], slopes: Slopes, rule: Rule) -> torch.Tensor | None:
    """(phi, psi) reproducing the pass of ``rule`` (with its fallbacks) on the live neurons, or None if that
    pass is infeasible: phi = log(lambda_i Gamma_ii), c_k = top(Lambda^1/2 Gamma_k Lambda^1/2).

    The rule is run again rather than its stored multipliers replayed: replaying fixed multipliers is
    ill-conditioned on deep nets (docs/decisions.md), while (phi, psi) re-evaluate stably.
    """
    phis: dict[int, torch.Tensor] = {}  # per layer, the last candidate offered: run() accepts the first feasible one
    tops: dict[int, float] = {}
    chooser = closed_form.rule_chooser(rule)

    def choose(ctx: LayerContext) -> Iterator[Candidate]:
        log_diag = torch.log(torch.diagonal(ctx.gamma))
        for label, lam in chooser(ctx):
            phis[ctx.index] = torch.log(lam) + log_diag
            tops[ctx.index] = float(top_eigenvalue(lam, ctx.gamma))
            yield label, lam

    try:
        with torch.no_grad():
            run(weights, slopes, choose)
    except InfeasibleCertificateError:
        return None
    # top >= lambda_max: near-boundary rules (GC(1.99)) can have top >= 2; their start is then scaled
    # down to c = 1.999 (a slightly different certificate; the result is never worse than the rule's).
    psi = [math.log(c / (2 - c)) for c in (min(tops[k], _MAX_START_C) for k in sorted(tops))]
    return torch.cat([phis[k] for k in sorted(phis)] + [torch.tensor(psi, dtype=weights[0].dtype)])


def _finish(problem: _Problem, best: Point | None, origin: RecursionResult, name: str, start_rule: str,
            trajectory: list[float], start_time: float) -> RecursionResult:
    """The best iterate recomputed through the recursion without autograd, or the start if that is not better."""
    result = origin
    if best is not None:
        with torch.no_grad():
            try:
                result = run(problem.weights, problem.slopes, problem.chooser(best.theta))
            except (InfeasibleCertificateError, torch.linalg.LinAlgError):
                result = origin
    if problem.value(result) > problem.value(origin):
        result = origin
    if not trajectory:
        trajectory = [problem.value(origin)]
    return _annotated(result, name, start_rule, trajectory, problem.evaluations, start_time)


def _annotated(result: RecursionResult, name: str, start_rule: str, trajectory: list[float], evaluations: int,
               start_time: float) -> RecursionResult:
    """A copy of ``result`` labelled ``name`` with the optimization record in ``extras``."""
    labels = [name if lab == _LABEL else lab for lab in result.labels]
    out = RecursionResult(result.gram, result.log_scale, list(result.multipliers), labels, list(result.notes))
    out.extras.update(start_rule=start_rule, start=trajectory[0], trajectory=trajectory,
                      iterations=len(trajectory) - 1, evaluations=evaluations,
                      seconds=time.perf_counter() - start_time)
    return out
