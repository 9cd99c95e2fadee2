"""The certificate of one residual block h(x) = S x + G sigma(W x + b) in closed form (docs/decisions.md 30).

Canonical form.  The loop transformation sigma(z) = alpha z + psi(z), psi slope-restricted on
[0, beta - alpha], writes the block as h(x) = S' x + G psi(W x + b) with S' = S + G diag(alpha) W;
it maps the slope quadratic constraints onto each other, so the block LMI is the same set of
certificates.  Scaling row i of W by b_i = beta_i - alpha_i (V = diag(b) W) leaves [0, 1] slopes.
Neurons with b_i = 0 (linear, folded into S'), a zero row of W (constant) or a zero column of G
(unused) are dropped.

Carried form.  A state E (n x n, E = I for a lone block) means "Delta x^T E^{-1} Delta x <= ||input||^2".
With Gamma = V E V^T, A = S' E V^T, C0 = S' E S'^T, and multipliers Lambda' = diag(lambda) > 0 with
M = 2 Lambda' - Lambda' Gamma Lambda' > 0 (Cholesky; a failure is "infeasible"),

    E_next = C0 + (A Lambda' + G) M^{-1} (A Lambda' + G)^T,      Lip(h)^2 <= lambda_max(E_next)

and (rho^2, Lambda = rho^2 Lambda') with rho^2 = lambda_max(E_next) makes the block LMI PSD.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import InfeasibleCertificateError
from .eigen import lambda_max, top_eigenvalue
from .recursion import factor_certificate, gram, shrink, solve_rt, upper_cholesky
from .rules import DEFAULT_RULE_SET

# Targets of the neuron rule's rescaling: lambda_max(Lambda^1/2 Gamma Lambda^1/2) = c (feasible for c < 2).
# The first ones sit just inside the boundary, where SLL blocks with singular T - W W^T have their optimum.
NEURON_TARGETS = (2 * (1 - 1e-10), 2 * (1 - 1e-7), 1.99, 1.9, 1.5, 1.0)


@dataclass(frozen=True)
class Canonical:
    """A block in canonical form: h(x) = shortcut x + outer psi(inner x + b), psi on [0, 1] per neuron.

    ``live`` marks the neurons of the original block that were kept (the others are linear, constant
    or unused); ``label`` names the slope treatment ("exact", or "relaxed": alpha >= 0 set to 0).
    """

    shortcut: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    live: torch.Tensor
    label: str


def canonical(shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
              beta: torch.Tensor, *, relax: bool = False) -> Canonical:
    """The loop-transformed block (exact); ``relax`` first widens [alpha, beta] to [0, beta] where 0 <= alpha < beta."""
    if relax:
        alpha = torch.where((alpha >= 0) & (alpha < beta), torch.zeros_like(alpha), alpha)
    s = shortcut + outer @ (alpha[:, None] * inner) if bool((alpha != 0).any()) else shortcut
    width = beta - alpha
    live = (width > 0) & (inner != 0).any(dim=1) & (outer != 0).any(dim=0)
    return Canonical(s, width[live, None] * inner[live], outer[:, live], live, "relaxed" if relax else "exact")


@dataclass(frozen=True)
class Stage:
    """The quantities of one block seen from a carried form E (see the module docstring)."""

    gamma: torch.Tensor   # V E V^T, m x m
    cross: torch.Tensor   # A = S' E V^T, n_out x m
    base: torch.Tensor    # C0 = S' E S'^T, n_out x n_out
    outer: torch.Tensor   # G, n_out x m


def stage(block: Canonical, factor: torch.Tensor | None = None) -> Stage:
    """Gamma, A and C0 of ``block`` from the lower factor L of the carried form E = L L^T (None: E = I)."""
    y = block.inner.T if factor is None else factor.T @ block.inner.T         # L^T V^T
    z = block.shortcut.T if factor is None else factor.T @ block.shortcut.T   # L^T S'^T
    return Stage(gram(y), z.T @ y, gram(z), block.outer)


def projected(st: Stage, head: torch.Tensor) -> Stage:
    """The stage of the block followed by the linear map ``head``: N A, N C0 N^T, N G (Gamma unchanged)."""
    base = head @ st.base @ head.T
    return Stage(st.gamma, head @ st.cross, (base + base.T) / 2, head @ st.outer)


def next_form(st: Stage, lam: torch.Tensor) -> torch.Tensor | None:
    """E_next for multipliers ``lam`` (per unit rho^2), or None if M = 2 Lambda - Lambda Gamma Lambda fails Cholesky.

    M is replaced by Lambda shrink(2 Lambda^{-1} - Gamma) Lambda <= M (the recursion's margin), which
    only enlarges E_next: the certificate stays valid.
    """
    if st.gamma.shape[0] == 0:
        return st.base.clone()
    found = factor_certificate(st.gamma, lam)
    if found is None:
        return None
    k = st.cross * lam[None, :] + st.outer
    return st.base + gram(solve_rt(found[1], k.T))


def top(form: torch.Tensor) -> float:
    """Certified upper bound on lambda_max of a carried form (0 for an empty one)."""
    return float(lambda_max(form)) if form.numel() else 0.0


def neuron_rule(st: Stage) -> torch.Tensor:
    """Per-neuron optimum of the one-neuron bound: lambda_i = x_i / Gamma_ii, x_i the root in (0, 2] of

    (a + c) x^2 + g x - g = 0,  a = ||A_i||^2 / Gamma_ii,  c = A_i . G_i,  g = ||G_i||^2 Gamma_ii

    (the minimizer of (a x^2 + 2 c x + g) / (x (2 - x)), the block bound with this neuron alone and
    shortcut S' E S'^T; it gives lambda = 2 / T_ii on SLL blocks).  Cauchy-Schwarz (c^2 <= a g)
    keeps the discriminant >= 0 and the root in (0, 2].
    """
    d = torch.diagonal(st.gamma)
    a = (st.cross * st.cross).sum(dim=0) / d
    c = (st.cross * st.outer).sum(dim=0)
    g = (st.outer * st.outer).sum(dim=0) * d
    disc = torch.clamp(g * g + 4 * (a + c) * g, min=0.0)
    return 2 * g / (g + torch.sqrt(disc)) / d


def proposals(st: Stage) -> Iterator[tuple[str, torch.Tensor]]:
    """Closed-form multipliers for one block: the Syed-Hu rules on Gamma, the neuron rule as it is and rescaled
    to lambda_max(Lambda^1/2 Gamma Lambda^1/2) = c for c in :data:`NEURON_TARGETS`, and the minima of both.

    Rules see Gamma / max diag (they are degree -1 homogeneous); the minimum of two multiplier
    vectors is feasible when either is (a smaller lambda only enlarges 2 Lambda^{-1} - Gamma).
    """
    scale = float(torch.diagonal(st.gamma).max())
    unit = st.gamma / scale
    cache: dict[str, object] = {}
    ruled = []
    for rule in DEFAULT_RULE_SET:
        lam = rule(unit, cache) / scale
        ruled.append((rule.name, lam))
        yield rule.name, lam
    lam = neuron_rule(st)
    root = lam.sqrt()
    scaled = root[:, None] * st.gamma * root[None, :]
    tau = top_eigenvalue(lambda v: root * (st.gamma @ (root * v)), len(lam), dense=scaled, dtype=lam.dtype,
                         device=lam.device)
    yield "neuron", lam
    for target in NEURON_TARGETS:
        yield f"neuron({target:.12g})", lam * (target / tau)
    for name, other in ruled:
        yield f"neuron&{name}", torch.minimum(lam, other)


def fixed_multiplier_form(block: Canonical, lam: torch.Tensor) -> float:
    """rho^2 = lambda_max(S'^T S' + K N^{-1} K^T) for true-scale multipliers Lambda (a lone block, E = I).

    K = S'^T G + V^T Lambda and N = 2 Lambda - G^T G must pass Cholesky (with the recursion's margin,
    which enlarges the value); raises :class:`InfeasibleCertificateError` otherwise.  This is the
    Schur complement of the block LMI on its neuron block: the smallest rho for this Lambda.
    """
    n = lam.shape[0]
    k = block.shortcut.T @ block.outer + block.inner.T * lam[None, :]
    if n == 0:
        return top(gram(block.shortcut))
    r = upper_cholesky(shrink(torch.diag(2 * lam) - gram(block.outer)))
    if r is None or not bool(torch.isfinite(lam).all()):
        raise InfeasibleCertificateError("2 Lambda - G^T G is not positive definite for these multipliers")
    return top(gram(block.shortcut) + gram(solve_rt(r, k.T)))


@dataclass(frozen=True)
class Choice:
    """The best multipliers found for one block: label, lambda per unit rho^2, E_next, its certified top."""

    label: str
    lam: torch.Tensor
    form: torch.Tensor
    value: float


def choose(st: Stage, candidates: Iterator[tuple[str, torch.Tensor]] | None = None,
           values: dict[str, float] | None = None) -> Choice:
    """The candidate of least certified lambda_max(E_next); ``values`` collects sqrt of every feasible one.

    Raises :class:`InfeasibleCertificateError` if no candidate passes Cholesky (SN(1), included in
    :func:`proposals`, always does up to its eigenvalue estimate).
    """
    best: Choice | None = None
    for label, lam in (proposals(st) if candidates is None else candidates):
        form = next_form(st, lam)
        if form is None:
            continue
        value = top(form)
        if values is not None:
            values[label] = math.sqrt(max(value, 0.0))
        if best is None or value < best.value:
            best = Choice(label, lam, form, value)
    if best is None:
        raise InfeasibleCertificateError("no closed-form multipliers of the residual block passed Cholesky")
    return best


PROBES = 4
"""Directions kept per block for the Rayleigh-Ritz lower bounds of :func:`least_top`."""
_PRUNE_MARGIN = 1e-9  # far above the rounding of lambda_max(P^T E_next P) and of the certified top


@dataclass
class Probe:
    """What :func:`least_top` learnt on one block from earlier carried forms: orthonormal directions near the
    top eigenvectors of its best next form (n_out x PROBES; None before the first call) and the winning label."""

    vectors: torch.Tensor | None = None
    label: str | None = None


def distinct(candidates: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(label, lambda, label of the first equal lambda): a repeated multiplier vector gives the same E_next."""
    seen: dict[bytes, str] = {}
    for label, lam in candidates:
        key = lam.detach().cpu().numpy().tobytes()
        yield label, lam, seen.setdefault(key, label)


def least_top(st: Stage, bar: float = math.inf, probe: Probe | None = None) -> float:
    """min(bar, least certified lambda_max(E_next) over :func:`proposals`): ``choose(st).value`` when below ``bar``.

    A candidate is skipped, without forming E_next, when lambda_max(P^T E_next P) (1 - 1e-9) >= the least
    value so far (or ``bar``): by Cauchy interlacing lambda_max(E_next) >= lambda_max(P^T E_next P) for
    orthonormal P, so its certified value would be larger and the minimum is unchanged.  P^T E_next P =
    P^T C0 P + Y^T Y, Y = R^{-T} K^T P, costs PROBES right-hand sides instead of n_out plus an eigvalsh.
    ``probe`` (updated here) carries P and the last winner (tried first) between calls on the same block.
    """
    probe = Probe() if probe is None else probe
    ordered = list(distinct(proposals(st)))
    ordered.sort(key=lambda c: c[0] != probe.label)  # stable: the last winner first, the rest in order
    best, best_form, best_label = bar, None, None
    p = probe.vectors
    base_p = None if p is None else p.T @ st.base @ p
    magnitude = st.gamma.abs()
    for label, lam, first in ordered:
        if first != label:
            continue
        k = st.cross * lam[None, :] + st.outer
        if p is not None and base_p is not None and best < math.inf and _above(st, magnitude, lam, k.T @ p,
                                                                             torch.diagonal(base_p), best):
            continue
        found = factor_certificate(st.gamma, lam)
        if found is None:
            continue
        if p is not None and base_p is not None and best < math.inf:
            y = solve_rt(found[1], k.T @ p)
            small = base_p + y.T @ y
            if float(torch.linalg.eigvalsh((small + small.T) / 2)[-1]) * (1 - _PRUNE_MARGIN) >= best:
                continue
        form = st.base + gram(solve_rt(found[1], k.T))
        value = top(form)
        if value < best:
            best, best_form, best_label = value, form, label
    if best_form is not None:
        probe.label = best_label
        probe.vectors = _refreshed(best_form, probe.vectors)
    return best


def _above(st: Stage, magnitude: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, base_p: torch.Tensor,
           best: float) -> bool:
    """True if v^T E_next v > best for some probe v, shown before any factorization.

    With x = K^T v and M' = Lambda shrink(2 Lambda^{-1} - Gamma) Lambda (the matrix E_next inverts),
    x^T M'^{-1} x >= (x^T x)^2 / (x^T M' x) when M' > 0 (Cauchy-Schwarz); if M' is not positive definite
    the candidate is infeasible and skipped anyway.  x^T M' x is taken with its rounding bound added
    (4 m eps |z|^T |M'| |z|, z = lambda x), so a near-singular direction cannot overstate the bound.
    """
    m = lam.shape[0]
    eps = torch.finfo(lam.dtype).eps
    delta = 4 * m * eps  # shrink's margin (recursion._MARGIN_EPS_PER_DIM = 4)
    gdiag = torch.diagonal(st.gamma)
    diag = gdiag + (2 / lam - gdiag) * (1 - delta)  # diagonal of shrink(2 Lambda^{-1} - Gamma) + Gamma
    z = lam[:, None] * x
    quad = (z * (diag[:, None] * z - st.gamma @ z)).sum(dim=0)
    error = 4 * m * eps * ((z.abs() * (magnitude @ z.abs())).sum(dim=0) + (diag.abs()[:, None] * z * z).sum(dim=0))
    upper = quad + error
    sq = (x * x).sum(dim=0)
    ok = (upper > 0) & (sq > 0)
    if not bool(ok.any()):
        return False
    lower = base_p[ok] + sq[ok] ** 2 / upper[ok]
    return float(lower.max()) * (1 - _PRUNE_MARGIN) >= best


def _refreshed(form: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
    """Orthonormal directions near the top eigenvectors of ``form``: eigh the first time, then two steps of
    subspace iteration from the previous ones (any orthonormal P gives a valid lower bound)."""
    width = min(PROBES, form.shape[0])
    if vectors is None:
        return torch.linalg.eigh((form + form.T) / 2).eigenvectors[:, -width:]
    for _ in range(2):
        vectors = torch.linalg.qr(form @ vectors).Q
    return vectors
