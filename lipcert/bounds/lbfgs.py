"""Barrier continuation with L-BFGS and backtracking, for objectives evaluated by the certified recursion.

Used by method ``optimized`` (:mod:`.optimize`) and by the local margins (:mod:`lipcert.local.margin`).
An objective maps parameters theta to a :class:`Point` (surrogate objective plus mu times a barrier,
and the certified value), or to None where the recursion's Cholesky fails: such trials are shrunk by
the line search, so every accepted iterate is a certificate.  The barrier weight mu runs down
:data:`BARRIER` (path following); a stage ends when its objective stalls.

The L-BFGS initial matrix is diag(gamma_b) over *blocks* of parameters (a hidden layer's parameters
in ``optimized``) with gamma_b = s_b^T y_b / y_b^T y_b from the newest pair (the scalar
s^T y / y^T y where s_b^T y_b <= 0): on deep chains the curvature of the first layers is orders of
magnitude above that of the last ones (docs/decisions.md 36), which one scalar cannot match.  The
curvature pairs are kept when a stage ends by stalling (mu changes little between stages) and dropped
when it ends by a failed line search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

_MEMORY = 40            # L-BFGS history length
_ARMIJO = 1e-4          # sufficient-decrease constant of the backtracking line search
_MAX_BACKTRACKS = 30
_FIRST_STEP = 0.1       # largest change of any parameter on the first (gradient) step
# Barrier weights mu of the continuation: objective + mu * barrier.
BARRIER = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
_STAGE_WINDOW = 5       # a stage ends when its last _STAGE_WINDOW iterations lowered its objective
_STAGE_TOL = 1e-5       # by less than max(_STAGE_TOL, mu) (log units), or when the line search fails


@dataclass
class Point:
    """One feasible iterate: parameters, objective (surrogate plus barrier), certified value.

    The gradient is computed on first use (:meth:`grad`): rejected line-search trials skip the backward pass.
    """

    theta: torch.Tensor
    objective: float
    value: float
    graph: tuple[torch.Tensor, torch.Tensor] | None  # (objective tensor, theta leaf) until the gradient is taken
    gradient: torch.Tensor | None = None

    def grad(self) -> torch.Tensor:
        if self.gradient is None:
            assert self.graph is not None
            self.gradient = torch.autograd.grad(*self.graph)[0]
            self.graph = None
        return self.gradient



def lbfgs_direction(grad: torch.Tensor, memory: list[tuple[torch.Tensor, torch.Tensor]],
                    blocks: torch.Tensor | None = None) -> torch.Tensor:
    """-H grad by the L-BFGS two-loop recursion (steepest descent without memory); ``blocks`` (a block index
    per parameter) gives the initial matrix one scale per block (module docstring)."""
    q = grad.clone()
    alphas = []
    for s, y in reversed(memory):
        a = float(s @ q) / float(y @ s)
        alphas.append(a)
        q -= a * y
    if memory:
        s, y = memory[-1]
        scale = float(s @ y) / float(y @ y)
        if blocks is None:
            q *= scale
        else:
            count = int(blocks.max()) + 1
            sy = torch.zeros(count, dtype=s.dtype, device=s.device).index_add_(0, blocks, s * y)
            yy = torch.zeros_like(sy).index_add_(0, blocks, y * y)
            per_block = torch.where((sy > 0) & (yy > 0), sy / yy.clamp(min=torch.finfo(yy.dtype).tiny),
                                    torch.full_like(sy, scale))
            q *= per_block[blocks]
    for (s, y), a in zip(memory, reversed(alphas)):
        b = float(y @ q) / float(y @ s)
        q += (a - b) * s
    return -q


class Objective(Protocol):
    """What :func:`minimize` needs: a barrier weight ``mu`` and iterates (None where infeasible)."""

    mu: float

    def evaluate(self, theta: torch.Tensor) -> Point | None: ...


def minimize(problem: Objective, theta: torch.Tensor, iterations: int, deadline: float | None,
             progress: bool | None, desc: str, target: float = 0.0, blocks: torch.Tensor | None = None,
             clock: list[float] | None = None) -> tuple[Point | None, list[float]]:
    """Barrier continuation with L-BFGS and backtracking from ``theta``.

    Returns the best iterate by certified value (None if ``theta`` itself is infeasible) and the
    trajectory: the certified value at the start and after every accepted iteration.  Stops early
    once a certified value is at most ``target``.  ``blocks``: see :func:`lbfgs_direction`.  ``clock``, if
    given, receives the :func:`time.perf_counter` time of every trajectory entry.
    """
    from tqdm.auto import tqdm

    problem.mu = BARRIER[0]
    point = problem.evaluate(theta)
    if point is None:
        return None, []
    best = point
    trajectory = [point.value]
    clock = [] if clock is None else clock
    clock.append(time.perf_counter())
    memory: list[tuple[torch.Tensor, torch.Tensor]] = []
    stage = 0
    recent = [point.objective]
    bar = tqdm(total=iterations, desc=desc, unit="it", disable=None if progress is None else not progress,
               leave=False)
    try:
        while len(trajectory) <= iterations and best.value > target:
            if deadline is not None and time.perf_counter() > deadline:
                break
            accepted = _line_search(problem, point, memory, deadline, blocks)
            if accepted is not None:
                recent.append(accepted.objective)
                best = accepted if accepted.value < best.value else best
                trajectory.append(accepted.value)
                clock.append(time.perf_counter())
                bar.update(1)
                bar.set_postfix(value=f"{best.value:.6g}")
                if not bool(torch.isfinite(accepted.grad()).all()):
                    break
                s, y = accepted.theta - point.theta, accepted.grad() - point.grad()
                if float(s @ y) > 1e-12 * float(s.norm() * y.norm()):
                    memory.append((s, y))
                    del memory[:-_MEMORY]
                point = accepted
            tol = max(_STAGE_TOL, problem.mu)
            stalled = len(recent) > _STAGE_WINDOW and recent[-_STAGE_WINDOW - 1] - recent[-1] < tol
            if accepted is None or stalled:  # this barrier weight has converged: lower it, or stop after the last
                stage += 1
                if stage == len(BARRIER):
                    break
                problem.mu = BARRIER[stage]
                if accepted is None:  # a failed line search distrusts the curvature pairs; a stall does not
                    memory.clear()
                point = problem.evaluate(point.theta)
                if point is None:
                    break
                recent = [point.objective]
    finally:
        bar.close()
    best.graph = None
    return best, trajectory


def _line_search(problem: Objective, point: Point, memory: list[tuple[torch.Tensor, torch.Tensor]],
                 deadline: float | None, blocks: torch.Tensor | None) -> Point | None:
    """Armijo backtracking along the L-BFGS direction; infeasible trials (failed Cholesky) are shrunk."""
    grad = point.grad()
    direction = lbfgs_direction(grad, memory, blocks)
    slope = float(grad @ direction)
    if not slope < 0:
        memory.clear()
        direction, slope = -grad, -float(grad @ grad)
    step = 1.0 if memory else _FIRST_STEP / max(float(direction.abs().max()), 1e-300)
    for _ in range(_MAX_BACKTRACKS):
        trial = problem.evaluate(point.theta + step * direction)
        if trial is not None and trial.objective <= point.objective + _ARMIJO * step * slope:
            return trial
        if deadline is not None and time.perf_counter() > deadline:
            return None
        step /= 2
    return None
