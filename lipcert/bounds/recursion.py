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
from . import abs_layer
from .result import Gram
from .rules import spectral_top

# Safety margin before every Cholesky, relative to the diagonal, in units of n * machine epsilon.
_MARGIN_EPS_PER_DIM = 4
_MAX_HALVINGS = 60
_SYRK_BLOCK = 256  # below this size gram() uses one full product


@dataclass(frozen=True)
class LayerContext:
    """What a multiplier chooser sees at hidden layer ``index`` (1-based).

    ``gamma`` is the normalized majorant (max diagonal 1) and ``next_weight`` the matrix that
    follows (S_{k+1} W_{k+1}, or W_L after the last hidden layer), for choosers that look ahead.
    ``log_scale`` is log of the factor that turns ``gamma`` into the true Gamma_k.  ``cache``
    lets the rules that see the same ``gamma`` share row sums and eigenvalue estimates.
    """

    index: int
    gamma: torch.Tensor
    next_weight: torch.Tensor
    log_scale: float
    cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)


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
        """sqrt(lambda_max(G_L)), inflated (:func:`lipcert.rounding.certified_root`; math.md section 5, rigour)."""
        return Gram(self.gram, self.log_scale).value


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
    *,
    abs_score: str = "top",
) -> RecursionResult:
    """Run the recursion on weights W_1..W_L with per-neuron slopes, multipliers from ``chooser``.

    ``slopes[k]`` are the (alpha, beta) the certificate uses for hidden layer k+1 (callers may
    relax alpha >= 0 to 0).  Neurons whose row of S_k W_k is zero are constant and dropped.
    Layers of fixed-slope and |.| neurons (alpha = beta or alpha = -beta) take the exact step of
    :mod:`.abs_layer`, without the chooser, keeping the candidate of least ``abs_score`` ("top":
    lambda_max, or "trace") of N P_k N^T for the next matrix N.  Raises :class:`InfeasibleCertificateError` if no
    candidate of the chooser is feasible.
    """
    r: torch.Tensor | None = None  # upper Cholesky factor of the normalized M_{k-1}; None = identity
    log_scale = 0.0
    multipliers: list[torch.Tensor] = []
    labels: list[str] = []
    notes: list[str] = []
    weight = weights[0]
    for k in range(len(weights) - 1):
        alpha, beta = slopes[k]
        if abs_layer.needs_exact_step(alpha, beta):  # fixed-slope and |.| neurons (MaxMin rewrite)
            step = abs_layer.step(r, weight, alpha, beta, weights[k + 1], abs_score)
            if not bool(step.live.any()):
                return RecursionResult(torch.zeros(weights[-1].shape[0], weights[-1].shape[0], dtype=weight.dtype,
                                                   device=weight.device), 0.0, multipliers, labels,
                                       notes + [f"layer {k + 1}: constant"])
            r, log_scale = step.r, log_scale + step.log_scale
            multipliers.append(step.multipliers.double() * math.exp(-log_scale))
            labels.append(step.label)
            if not bool(step.live.all()):
                notes.append(f"layer {k + 1}: {int((~step.live).sum())} constant neurons dropped")
            weight = weights[k + 1][:, step.live]
            continue
        s_vec, p_vec = alpha + beta, alpha * beta
        v = _scaled_rows(s_vec, weight)                   # S_k W_k
        y = solve_rt(r, v.T)                              # R^{-T} W^T S
        gamma = gram(y)
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
        gamma = gamma.div_(scale)  # in place: gram() made it, and the backward of its products needs no output
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
        multipliers.append(full_lam.double() * math.exp(-log_scale))
        labels.append(label)
        weight = nxt
    return RecursionResult(final_gram(r, weight), log_scale, multipliers, labels, notes)


def replay(
    weights: list[torch.Tensor],
    slopes: list[tuple[torch.Tensor, torch.Tensor]],
    multipliers: list[torch.Tensor],
    labels: list[str],
) -> RecursionResult:
    """Run the recursion again with given true-scale multipliers (zero on constant neurons).

    This is the float64 check of a certificate found in float32 (math.md section 5): every
    Cholesky test and the final Gram matrix are those of :func:`run` in the dtype of ``weights``,
    so the result is as rigorous as a run in that precision.  Raises
    :class:`InfeasibleCertificateError` if the multipliers fail a test or do not match the live
    neurons.  With negative alpha, :func:`run` may halve a layer's multipliers (still a certificate).
    """
    def choose(ctx: LayerContext) -> Iterable[Candidate]:
        lam = multipliers[ctx.index - 1].to(ctx.gamma)
        lam = lam[lam > 0]
        if lam.shape != ctx.gamma.shape[:1]:
            raise InfeasibleCertificateError(f"hidden layer {ctx.index}: {lam.shape[0]} positive multipliers "
                                             f"for {ctx.gamma.shape[0]} live neurons")
        yield labels[ctx.index - 1], torch.exp(torch.log(lam) + ctx.log_scale)

    by_trace = any(lab.endswith(" by trace") for lab in labels)
    return run(weights, slopes, choose, abs_score="trace" if by_trace else "top")


def _scaled_rows(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """S W for a diagonal S = diag(s); W itself when every s_i is 1 (ReLU-like slopes [0, 1]: no copy)."""
    return weight if bool((s == 1).all()) else s[:, None] * weight


def final_gram(r: torch.Tensor | None, last: torch.Tensor) -> torch.Tensor:
    """G_L = W_L M^{-1} W_L^T from the upper factor R of M, computed in float64 (W_L has few rows)."""
    r64 = None if r is None else r.double()
    return gram(solve_rt(r64, last.double().T))


def gram(y: torch.Tensor) -> torch.Tensor:
    """Y^T Y, exactly symmetric (batched over leading dimensions).

    A recursive block version of BLAS syrk, which torch lacks: the off-diagonal block is one
    product, mirrored, and the diagonal blocks recurse, so about half of the product's flops
    are spent at large sizes (docs/decisions.md 11).
    """
    n = y.shape[-1]
    if n <= _SYRK_BLOCK:
        g = y.mT @ y
        return (g + g.mT).mul_(0.5)
    h = n // 2
    g = torch.empty(*y.shape[:-2], n, n, dtype=y.dtype, device=y.device)
    y1, y2 = y[..., :h], y[..., h:]
    g[..., :h, :h] = gram(y1)
    low = y2.mT @ y1
    g[..., h:, :h] = low
    g[..., :h, h:] = low.mT
    g[..., h:, h:] = gram(y2)
    return g


@dataclass
class _Pass:
    """History of one named pass of :func:`run_passes`."""

    multipliers: list[torch.Tensor] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    truncated: list[float] = field(default_factory=list)


@dataclass
class _Node:
    """One distinct trajectory: the upper factor of the normalized M_{k-1}, its log scale, its passes."""

    r: torch.Tensor | None
    log_scale: float
    passes: list[str]


def run_passes(
    weights: list[torch.Tensor],
    slopes: list[tuple[torch.Tensor, torch.Tensor]],
    choosers: dict[str, Chooser],
    *,
    prune: float | None = None,
    beam: int | None = None,
    keep: Iterable[str] = (),
) -> dict[str, RecursionResult]:
    """Several passes of :func:`run` at once, for slopes with alpha * beta = 0 (the closed forms).

    Passes whose multipliers agree exactly share their trajectory (so all of them share layer 1,
    where M_0 = I), and each distinct trajectory computes its Gamma once.  Every pass performs
    the operations of :func:`run`, so its result is that of running it alone, bitwise when no
    neuron is constant (constant neurons are dropped before the Gram product here and after it
    in :func:`run`, which changes the order of the sums; both are certificates).  Batched torch
    calls are not used (docs/decisions.md 11).

    ``prune``: from the second to the last-but-one hidden layer, drop trajectories whose truncated
    bound exp(log_scale) lambda_max(Gamma_k) (the bound of the net cut after W_k) exceeds the
    best one's by more than the factor 1 + prune, and proposals dominated in the Loewner order
    (:func:`_dominated`), unless they carry a pass named in ``keep``; with ``beam``, also keep at
    most that many trajectories (the lowest truncated bounds) besides those.  Every pass that finishes
    is a valid certificate; pruning only drops candidates.  Each result's ``extras["truncated"]``
    lists its log truncated bounds where pruning was tested, and ``extras["pruned"]`` maps every
    dropped pass to its hidden layer.
    """
    if any(bool(((a * b) != 0).any()) for a, b in slopes):
        raise ValueError("run_passes handles slopes with alpha * beta = 0 only; use run()")
    protected = set(keep)
    history = {name: _Pass() for name in choosers}
    nodes = [_Node(None, 0.0, list(choosers))]
    dropped: dict[str, int] = {}
    weight = weights[0]
    last = weights[-1]
    for k in range(len(weights) - 1):
        alpha, beta = slopes[k]
        s_vec = alpha + beta
        v = _scaled_rows(s_vec, weight)                               # S_k W_k
        nxt = weights[k + 1]
        live = (v != 0).any(dim=1)
        if not bool(live.any()):  # every neuron constant: f is constant
            zero = torch.zeros(last.shape[0], last.shape[0], dtype=last.dtype, device=last.device)
            return {name: RecursionResult(zero, 0.0, h.multipliers, h.labels, h.notes + [f"layer {k + 1}: constant"])
                    for name, h in history.items() if name not in dropped}
        all_live = bool(live.all())
        if not all_live:
            v, nxt = v[live], nxt[:, live]
            for node in nodes:
                for name in node.passes:
                    history[name].notes.append(f"layer {k + 1}: {int((~live).sum())} constant neurons dropped")
        gammas = _gammas(nodes, v)
        next_s = (slopes[k + 1][0] + slopes[k + 1][1]) if k + 1 < len(slopes) else None
        next_weight = nxt if next_s is None else (next_s[live] if not all_live else next_s)[:, None] * nxt
        contexts = []
        for node, gamma in zip(nodes, gammas):
            scale = float(torch.diagonal(gamma).max())
            gamma.div_(scale)
            node.log_scale += math.log(scale)
            contexts.append(LayerContext(k + 1, gamma, next_weight, node.log_scale))
        # At the last hidden layer pruning would save one Cholesky factorization per pass, while the
        # truncated bound predicts the final one worst there (W_L sees few directions): no pruning.
        layer_prune, layer_beam = (prune, beam) if k < len(weights) - 2 else (None, None)
        if k > 0:
            nodes, contexts = _prune(nodes, contexts, history, layer_prune, layer_beam, protected, dropped)
        nodes = _advance(nodes, contexts, choosers, history, live if not all_live else None,
                         layer_prune, protected, dropped)
        weight = nxt
    out = {}
    for node in nodes:
        g = final_gram(node.r, weight)
        for name in node.passes:
            h = history[name]
            out[name] = RecursionResult(g, node.log_scale, h.multipliers, h.labels, h.notes,
                                        {"truncated": h.truncated, "pruned": dict(dropped)})
    return out


def _gammas(nodes: list[_Node], v: torch.Tensor) -> list[torch.Tensor]:
    """Gamma = V M^{-1} V^T of every trajectory, with the same operations as :func:`run`."""
    return [gram(solve_rt(node.r, v.T)) for node in nodes]


def _prune(nodes: list[_Node], contexts: list[LayerContext], history: dict[str, _Pass], prune: float | None,
           beam: int | None, protected: set[str], dropped: dict[str, int]) -> tuple[list[_Node], list[LayerContext]]:
    """Record truncated bounds; keep the trajectories within the factor 1 + prune of the best (at most ``beam``)."""
    if prune is None and beam is None:
        return nodes, contexts
    logs = []
    for node, ctx in zip(nodes, contexts):
        top = spectral_top(ctx.gamma, ctx.cache)  # cached: SN(c) reuses it
        logs.append(node.log_scale + math.log(top))
        for name in node.passes:
            history[name].truncated.append(logs[-1])
    if len(nodes) == 1:
        return nodes, contexts
    limit = min(logs) + (math.log1p(prune) if prune is not None else math.inf)
    guarded = [i for i, node in enumerate(nodes) if protected.intersection(node.passes)]
    free = sorted(set(range(len(nodes))) - set(guarded), key=logs.__getitem__)
    kept = sorted(guarded + [i for i in free[:beam] if logs[i] <= limit])
    for i in set(range(len(nodes))) - set(kept):
        for name in nodes[i].passes:
            dropped[name] = contexts[i].index
    return [nodes[i] for i in kept], [contexts[i] for i in kept]


def _advance(nodes: list[_Node], contexts: list[LayerContext], choosers: dict[str, Chooser],
             history: dict[str, _Pass], live: torch.Tensor | None, prune: float | None,
             protected: set[str], dropped: dict[str, int]) -> list[_Node]:
    """Choose every pass's multipliers (each distinct first candidate factored once) and group equal choices.

    With ``prune``, first drop the passes whose proposal is dominated (:func:`_dominated`).
    """
    pending = []  # (node index, pass name, candidate iterator, label, lam)
    for i, (node, ctx) in enumerate(zip(nodes, contexts)):
        for name in node.passes:
            it = iter(choosers[name](ctx))
            first = next(it, None)
            if first is None:
                raise InfeasibleCertificateError(f"no feasible multipliers at hidden layer {ctx.index}")
            pending.append((i, name, it, first[0], first[1]))
    if prune is not None:
        beaten = _dominated(pending, contexts, prune, protected)
        for t in beaten:
            dropped[pending[t][1]] = contexts[pending[t][0]].index
        pending = [p for t, p in enumerate(pending) if t not in beaten]
    # Distinct first candidates (passes on one trajectory often propose the same multipliers).
    distinct: list[tuple[int, torch.Tensor]] = []
    which = []
    for i, _, _, _, lam in pending:
        j = next((j for j, (i2, lam2) in enumerate(distinct) if i2 == i and torch.equal(lam, lam2)), None)
        if j is None:
            distinct.append((i, lam))
            j = len(distinct) - 1
        which.append(j)
    factored = [factor_certificate(contexts[i].gamma, lam) for i, lam in distinct]
    groups: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
    for (i, name, it, label, lam), j in zip(pending, which):
        found = factored[j]
        while found is None:
            nxt = next(it, None)
            if nxt is None:
                raise InfeasibleCertificateError(f"no feasible multipliers at hidden layer {contexts[i].index}")
            label, lam = nxt
            found = factor_certificate(contexts[i].gamma, lam)
        key = next((key for key, (lam2, _, _) in groups.items() if key[0] == i and torch.equal(lam2, found[0])),
                   (i, len(groups)))
        groups.setdefault(key, (found[0], found[1], []))[2].append(name)
        h = history[name]
        full = found[0]
        if live is not None:
            full = torch.zeros(live.shape[0], dtype=lam.dtype, device=lam.device)
            full[live] = found[0]
        h.multipliers.append(full.double() * math.exp(-contexts[i].log_scale))
        h.labels.append(label)
    return [_Node(r, nodes[i].log_scale, names) for (i, _), (_, r, names) in groups.items()]


def _dominated(pending: list[tuple[int, str, Any, str, torch.Tensor]], contexts: list[LayerContext],
               prune: float, protected: set[str]) -> set[int]:
    """Indices of proposals whose M_k is Loewner-below a sibling's M_k / (1 + prune) (siblings share Gamma_k).

    With g = lambda_max(Gamma), every M = 2 Lambda - Lambda Gamma Lambda satisfies
    diag(2 lambda - g lambda^2) <= M <= 2 Lambda, so 2 lambda_a (1 + prune) <= 2 lambda_b - g lambda_b^2
    implies that the next truncated bound of a is at least (1 + prune) times that of b: the
    truncated-bound test of the next layer would drop a.  Dropping it now saves its Cholesky
    factorization, its Gamma and their memory.
    """
    out = set()
    for t, (i, name, _, _, lam) in enumerate(pending):
        if name in protected:
            continue
        g = spectral_top(contexts[i].gamma, contexts[i].cache)
        for u, (i2, _, _, _, other) in enumerate(pending):
            if u != t and i2 == i and u not in out and bool((2 * (1 + prune) * lam <= other * (2 - g * other)).all()):
                out.add(t)
                break
    return out


def factor_certificate(gamma: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """P = 0: Cholesky of C' = shrink(2 diag(1/lambda) - Gamma); then R_M = R_C diag(lambda).

    M' = Lambda C' Lambda <= M, so carrying R_M forward is valid (monotonicity).
    """
    if not bool(torch.isfinite(lam).all()) or not bool((lam > 0).all()):
        return None
    low = _lower_cholesky(_margin_matrix(gamma, lam))
    if low is None:
        return None
    return lam, (low * lam[:, None]).T  # out of place: autograd (method optimized) keeps low


def _margin_matrix(gamma: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """shrink(2 diag(1/lambda) - Gamma), built without symmetrizing (Cholesky reads the lower triangle)."""
    delta = _MARGIN_EPS_PER_DIM * gamma.shape[-1] * torch.finfo(gamma.dtype).eps
    c = -gamma
    diag = c.diagonal(dim1=-2, dim2=-1)
    diag.add_(2.0 / lam).mul_(1 - delta)
    return c


def _lower_cholesky(mat: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factor from the lower triangle of ``mat``, or None if not positive definite.

    A NaN anywhere in the lower triangle reaches the factor's diagonal, so checking that suffices.
    """
    low, info = torch.linalg.cholesky_ex(mat)
    if int(info) != 0 or not bool(torch.isfinite(low.diagonal()).all()):
        return None
    return low


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
