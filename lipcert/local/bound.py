"""Local Lipschitz constants: bounds valid on one ball, by the Theorem 1 recursion in factored form
(math.md 3 (Pn), 7(ii)).

On a ball B = {x' : ||x' - x|| <= r} most neurons have a narrow slope range: stably inactive
ReLUs are constant, stably active ones linear, saturated sigmoids nearly flat.  Any pair x', x''
in B has its pre-activations inside the intervals that bound them over B, so the incremental
constraints of math.md section 2 hold with the slopes [alpha_i, beta_i] of each neuron's
activation on its interval (:func:`lipcert.bounds.intervals.slope_interval`), and the Theorem-1
recursion with those slopes bounds ||f(x') - f(x'')|| / ||x' - x''|| on B.

**The recursion in factored form.**  Write each neuron as its fixed linear part plus a
slope-restricted rest: phi_i(z) = alpha_i z + psi_i(z) with psi_i slope-restricted on
[0, s_i], s_i = beta_i - alpha_i (the loop transformation: exact for linear neurons, never a
negative alpha * beta term, so SiLU/GELU need no halving).  The state after hidden layer k-1 is a
factor F with: for x', x'' in B, Delta a_{k-1} = F xi for some ||xi|| <= ||x' - x''||_2
(F_0 = I).  With V = W_k F, U the neurons with s_i > 0, Gamma = S V_U V_U^T S and diagonal
Lambda > 0 chosen by a closed-form rule with M = 2 Lambda - Lambda Gamma Lambda > 0,

    Q = [[I, -V_U^T S Lambda], [-Lambda S V_U, 2 Lambda]]   satisfies   (xi, Delta psi)^T Q (xi, Delta psi)
        = ||xi||^2 - 2 sum_i lambda_i Delta psi_i (s_i Delta z_i - Delta psi_i) <= ||xi||^2,

and Delta a_k = A (xi, Delta psi) with A = [D_alpha V, E_U], so the next factor is
F_k = A R_Q^{-1} = [D_alpha V, (D_alpha V V_U^T S Lambda + E_U) R_M^{-1}] (R upper Cholesky
factors).  With no fixed part this is exactly Theorem 1 (F = R_M^{-1}, F F^T = M^{-1}); a layer whose
neurons all have fixed slopes is merged into the previous one (F_k = D_alpha W_k F_{k-1}); stably
inactive neurons are removed.  F is recompressed by a QR factorization when it has more columns
than rows (F F^T is all that matters).  Finally Lip(c^T f) <= ||F_{L-1}^T W_L^T c|| on B, and
by (Pn) the pre-activation i of layer k moves by at most ||row_i(W_k F_{k-1})|| ||x' - x||_2.

**Intervals.**  Per neuron, the tighter of (a) the value at x (enclosed by interval arithmetic with
rounding) plus r_2 times that per-neuron constant, r_2 = r (L2) or r sqrt(d) (L-infinity), and
(b) interval bound propagation (IBP) over the ball; the first layer uses the exact
r ||W_1,i||_2 (L2) or r ||W_1,i||_1 (L-infinity).  Several passes (rules x dampings, see
:data:`DAMPINGS`) run side by side; each neuron takes the smallest constant over the passes, and
the margins the smallest over passes and the global bound.

**Anchored constants.**  A radius needs only pairs (x', x) with x the centre.  Then each neuron's
secant (phi(z') - phi(z0)) / (z' - z0) has the fixed end z0 = z(x): for a ReLU with z0 > 0 it lies
in [z0 / (z0 - l), 1] instead of [0, 1], with z0 < 0 in [0, u / (u - z0)].  The recursion with these
slopes (``anchored=True``; ReLU-like and sigmoid, tanh, SiLU, GELU:
:func:`lipcert.bounds.intervals.anchored_slopes`; the others keep [alpha, beta]) bounds
|c^T (f(x') - f(x))| / ||x' - x||, and its per-neuron constants bound z(x') - z(x), which is what
the intervals need; at no extra cost they are several times smaller than the pairwise ones on the
balls that matter (docs/decisions.md item 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds.closed_form import rule_chooser
from ..bounds.intervals import anchored_slopes, image, slope_interval
from ..bounds.recursion import LayerContext, factor_certificate
from ..bounds.result import Gram
from ..bounds.rules import Rule, parse_rule
from ..errors import InfeasibleCertificateError, InvalidArgumentError, ShapeMismatchError, UnknownActivationError
from ..network import Network, require_network
from ..norms import check_eps, l2_radius, parse_norm
from ..rounding import INFLATION, affine_gamma, inflate

LOCAL_RULES: tuple[Rule, ...] = (Rule("gcs", 1.0), Rule("sn", 1.0), Rule("gcs", 0.7))
"""Rules run side by side by default.  Locally, rules with c near 2 (GC(1.99), GCs(1.5), Shift) are much
looser: the fixed neurons of a layer pay for large multipliers of its free ones (the cross term of F_k),
and a smaller c helps on small balls (GCs(0.7)); docs/decisions.md item 10."""


def _theta(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """min(1, s_i / |alpha_i|) with s = beta - alpha (1 where alpha_i = 0)."""
    return torch.clamp((beta - alpha) / alpha.abs(), max=1.0)


def _linear(lam: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """lambda_i min(1, s_i / |alpha_i|)."""
    return lam * _theta(alpha, beta)


def _sqrt(lam: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """lambda_i sqrt(min(1, s_i / |alpha_i|))."""
    return lam * _theta(alpha, beta).sqrt()


DAMPINGS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": _linear, "sqrt": _sqrt}
"""Dampings of a rule's multipliers lambda of the free neurons of a layer with slopes [alpha, beta],
s = beta - alpha.  Shrinking lambda keeps M = 2 Lambda - Lambda Gamma Lambda positive definite, so
any damping is valid (the Cholesky decides).  In the scalar case (one neuron, V = v, t = lambda s^2
||v||^2 in (0, 2)) the factored recursion bounds the slope by sqrt((2 alpha beta t + s^2) / (t (2 - t))):
SN(1) (t = 1) gives sqrt(alpha^2 + beta^2), t = s / max(|alpha|, |beta|) the exact max(|alpha|, |beta|).
In wide layers the rules' lambda_i Gamma_ii are already below 1, so neither that optimum nor s / |alpha|
is exact; the milder sqrt damping is tighter on most margins, the linear one on some (docs/decisions.md
item 10).  Both leave fixed-slope-free layers alone (alpha = 0 gives factor 1); with anchored ReLU slopes
(alpha = z0 / (z0 - l) > 0) they differ and the passes split, about doubling the work per layer."""
LOCAL_DAMPINGS: tuple[str, ...] = ("linear", "sqrt")
"""Dampings run side by side by default: every rule once with each, each margin takes the minimum."""
Known = Sequence[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]
"""Sound (lower, upper) bounds on the pre-activations of every hidden layer over a ball."""
Intervals = Callable[[torch.Tensor, float], Known]
"""Provider of :data:`Known` bounds from another method, given the ball's centre (flat) and radius."""
_KNOWN_PAD = 1e-8
"""Widening of ``known`` pre-activation bounds, relative to the neuron's |z(x)| plus lipcert's own interval
width.  auto_LiRPA computes them in float64 without directed rounding, and its error scales with sums of
|A| |x| terms that lipcert does not see, so this is a heuristic margin (1e8 times float64's epsilon), not a
rounding bound; lipcert's own intervals alone are rigorous."""


@dataclass(frozen=True, eq=False)
class LocalBound:
    """Lipschitz bounds of a network on one ball, and the intervals and slopes behind them.

    Attributes
    ----------
    radius : float
        Radius r of the ball around the input (in ``norm``, input units).
    norm : str
        ``"2"`` or ``"inf"``.
    lower, upper : tuple of Tensor
        Per hidden layer, bounds on every pre-activation over the ball.
    alphas, betas : tuple of Tensor
        Per hidden layer, the slopes the certificate uses for every neuron: the slope interval on
        [lower, upper], or with ``anchored`` the range of secants from z(centre) into it.
    grams : dict of str to Gram
        Per pass (named "rule damping"), Lip(c^T f) <= sqrt(c^T G c) for pairs of inputs in the ball
        (L2 constants); if ``anchored``, only for pairs (x', x) with x the centre.
    anchored : bool
        Whether the slopes are secants anchored at the centre.
    multipliers : dict of str to dict of int to Tensor
        Per pass, per hidden layer (1-based) with free neurons, log of the true multipliers of its
        free neurons (the start of :func:`lipcert.local.margin.optimized_margin`).
    """

    radius: float
    norm: str
    lower: tuple[torch.Tensor, ...]
    upper: tuple[torch.Tensor, ...]
    alphas: tuple[torch.Tensor, ...]
    betas: tuple[torch.Tensor, ...]
    grams: dict[str, Gram]
    anchored: bool
    multipliers: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)

    def pairwise(self) -> np.ndarray:
        """K x K bounds on Lip_2(f_i - f_j) over pairs of inputs in the ball (pairs (x', x) if
        ``anchored``), the minimum over the passes."""
        return np.minimum.reduce([g.pairwise() for g in self.grams.values()])

    @property
    def value(self) -> float:
        """Bound on the L2 Lipschitz constant of f on the ball (if ``anchored``: on
        ||f(x') - f(x)|| / ||x' - x|| for x' in it)."""
        return min(g.value for g in self.grams.values())

    @property
    def fixed_share(self) -> float:
        """Share of hidden neurons whose slope is fixed on the ball (alpha = beta, including 0)."""
        fixed = sum(int((a == b).sum()) for a, b in zip(self.alphas, self.betas))
        total = sum(a.numel() for a in self.alphas)
        return fixed / total if total else 1.0


Offer = Callable[[LayerContext, torch.Tensor, torch.Tensor], Iterator[torch.Tensor]]
"""Multipliers (normalized units, tried in order until one passes Cholesky) for the free neurons of a
layer, given its context and those neurons' slopes alpha, beta."""


def _rule_offer(rule: Rule, damping: str) -> Offer:
    """A closed-form rule's multipliers and fallbacks, damped."""
    choose = rule_chooser(rule)

    def offer(ctx: LayerContext, alpha: torch.Tensor, beta: torch.Tensor) -> Iterator[torch.Tensor]:
        for _, lam in choose(ctx):
            yield DAMPINGS[damping](lam, alpha, beta)

    return offer


@dataclass
class Pass:
    """One or more named variants sharing a trajectory: factor F (None = identity) scaled by
    exp(log_scale / 2), and per hidden layer with free neurons the log of the true multipliers used."""

    variants: list[tuple[str, Offer]]
    factor: torch.Tensor | None
    log_scale: float = 0.0
    thetas: dict[int, torch.Tensor] = field(default_factory=dict)


def _affine_box(w: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval of W a + b over the box lo <= a <= hi, widened for float64 rounding."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre, spread = w @ mid + b, w.abs() @ rad
    slack = affine_gamma(w.shape[1] + 2) * (w.abs() @ (mid.abs() + rad) + b.abs() + centre.abs() + spread)
    return centre - spread - slack, centre + spread + slack


def _check(net: Network) -> None:
    for act in net.activations:
        if act.fn is None:
            raise UnknownActivationError(f"local bounds evaluate the network; activation {act.name!r} is given "
                                         "only by its slope bounds")


def local_bound(net: Network, x: np.ndarray | torch.Tensor, radius: float, norm: str | float = 2, *,
                rules: Sequence[Rule | str] = LOCAL_RULES, dampings: Sequence[str] = LOCAL_DAMPINGS,
                known: Known | None = None,
                anchored: bool = False) -> LocalBound:
    """Lipschitz bounds of ``net`` valid for pairs of inputs in the ball of ``radius`` around ``x``.

    Parameters
    ----------
    net : Network
    x : array (d,) or (*net.input_shape)
        Centre of the ball (the network's input space).
    radius : float
        Radius r >= 0 of the ball, in ``norm``.
    norm : 2 or "inf"
        Ball norm.  The constants are L2 constants either way (for L-infinity balls the
        certificate uses ||x' - x||_2 <= r sqrt(d)).
    rules : sequence of Rule or str
        Closed-form rules run side by side (default :data:`LOCAL_RULES`).
    dampings : sequence of str
        Names in :data:`DAMPINGS`; every rule runs once with each (default :data:`LOCAL_DAMPINGS`).
    known : sequence of (lower, upper), optional
        Sound bounds on the pre-activations of each hidden layer over the same ball from another
        method (e.g. :func:`lipcert.adapters.lirpa.preactivation_bounds`); widened by
        :data:`_KNOWN_PAD` and intersected with lipcert's.
    anchored : bool
        If True, the constants bound |c^T (f(x') - f(x))| / ||x' - x|| for x' in the ball (secant
        slopes anchored at the centre, see the module docstring), not Lipschitz constants on the ball.

    Returns
    -------
    LocalBound
    """
    net = require_network(net, "local_bound")  # dense weight matrices (operator layers densified)
    _check(net)
    norm_name = parse_norm(norm)
    radius = float(check_eps(radius)[0])
    centre = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x),
                             dtype=torch.float64).reshape(-1)
    if centre.numel() != net.input_dim:
        raise ShapeMismatchError(f"the ball centre must have {net.input_dim} entries, got {centre.numel()}")
    rule_list = [parse_rule(r) if isinstance(r, str) else r for r in rules]
    if not rule_list:
        raise InvalidArgumentError("local bounds need at least one rule")
    r2 = l2_radius(radius, norm_name, net.input_dim)
    weights, biases, acts = net.weights, net.biases, net.activations
    unknown = [d for d in dampings if d not in DAMPINGS]
    if unknown or not dampings:
        raise InvalidArgumentError(f"dampings must be a non-empty subset of {', '.join(DAMPINGS)}, got {dampings!r}")
    passes = [Pass([(f"{rule.name} {d}", _rule_offer(rule, d)) for rule in rule_list for d in dampings], None)]
    live = torch.ones(net.input_dim, dtype=torch.bool)
    point = (centre, centre)        # enclosure of a_{k-1}(x)
    box = point                     # IBP box of a_{k-1} over the ball (layer 1: handled exactly)
    lowers, uppers, alphas, betas = [], [], [], []
    for k, act in enumerate(acts):
        w, b = weights[k][:, live], biases[k]
        zl0, zu0 = _affine_box(weights[k], b, *point)
        vs = [w if p.factor is None else w @ p.factor for p in passes]
        lip = torch.stack([_row_norms(w, v, p) for v, p in zip(vs, passes)]).min(0).values
        if k == 0:
            dual = w.norm(dim=1) if norm_name == "2" else w.abs().sum(1)
            ibp = (zl0 - radius * dual * (1 + INFLATION), zu0 + radius * dual * (1 + INFLATION))
        else:
            ibp = _affine_box(weights[k], b, *box)
        lo = torch.maximum(ibp[0], zl0 - r2 * lip)
        hi = torch.minimum(ibp[1], zu0 + r2 * lip)
        if known is not None:  # another tool's float64 bounds: widened by _KNOWN_PAD of the neuron's scale
            pad = _KNOWN_PAD * (zl0.abs() + zu0.abs() + (hi - lo))
            lo = torch.maximum(lo, torch.as_tensor(np.asarray(known[k][0], np.float64)).reshape(-1) - pad)
            hi = torch.minimum(hi, torch.as_tensor(np.asarray(known[k][1], np.float64)).reshape(-1) + pad)
        alpha, beta = slope_interval(act, lo, hi)
        box = image(act, lo, hi, alpha, beta)
        if anchored:
            alpha, beta = anchored_slopes(act, lo, hi, zl0, zu0, alpha, beta)
        lowers.append(lo)
        uppers.append(hi)
        alphas.append(alpha)
        betas.append(beta)
        point = image(act, zl0, zu0, *slope_interval(act, zl0, zu0))
        passes, live = next_passes(net, k, passes, vs, alpha, beta)
    grams = {}
    for p in passes:
        out = output_factor(net, p, live)
        g = out @ out.T
        grams[p.variants[0][0]] = Gram((g + g.T) / 2, p.log_scale)
    return LocalBound(radius, norm_name, tuple(lowers), tuple(uppers), tuple(alphas), tuple(betas), grams, anchored,
                      {p.variants[0][0]: p.thetas for p in passes})


def next_passes(net: Network, k: int, passes: list[Pass], vs: list[torch.Tensor], alpha: torch.Tensor,
                beta: torch.Tensor) -> tuple[list[Pass], torch.Tensor]:
    """The passes after hidden layer k (0-based) given V = W_k F of each pass, and its live neurons."""
    keep = (alpha != 0) | (beta != 0)
    nxt = net.weights[k + 1][:, keep]
    return [q for p, v in zip(passes, vs) for q in _advance(p, v[keep], alpha[keep], beta[keep], k + 1, nxt)], keep


def output_factor(net: Network, p: Pass, live: torch.Tensor) -> torch.Tensor:
    """W_L F of a finished pass (times exp(log_scale / 2)): Lip(c^T f) <= ||(W_L F)^T c||."""
    last = net.weights[-1][:, live]
    return last if p.factor is None else last @ p.factor


def _row_norms(w: torch.Tensor, v: torch.Tensor, p: Pass) -> torch.Tensor:
    """Upper bounds on the row norms of the exact W F (times the pass's scale), from V = fl(W F).

    Entry (i, j) of fl(W F) is off by at most gamma_n ||w_i|| ||F e_j||, so row i's norm by at most
    gamma_n ||w_i|| ||F||_F.
    """
    norms = v.norm(dim=1)
    if p.factor is not None:
        norms = norms + affine_gamma(w.shape[1]) * w.norm(dim=1) * float(p.factor.norm())
    return inflate(norms, p.log_scale)


def _advance(p: Pass, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, index: int,
             nxt: torch.Tensor) -> list[Pass]:
    """The passes after one hidden layer, given V = W_k F (live rows) and the slopes of its neurons.

    A pass holding several (rule, damping) variants splits at the first layer where they choose
    multipliers (a layer with a neuron of unfixed slope); variants whose damped multipliers are
    equal (every damping is the identity on neurons with alpha = 0, e.g. ReLU with pairwise slopes; not
    with anchored ones, where alpha = z0 / (z0 - l) > 0) keep sharing a pass.
    """
    s = beta - alpha
    free = (s > 0) & ((v != 0).any(dim=1))
    fixed = alpha[:, None] * v
    if not bool(free.any()):
        return [Pass(p.variants, _compress(fixed), p.log_scale, p.thetas)]
    vu = s[free][:, None] * v[free]                      # S V_U
    gamma = vu @ vu.T
    gamma = (gamma + gamma.T) / 2
    scale = float(torch.diagonal(gamma).max())
    gamma = gamma / scale
    ctx = LayerContext(index, gamma, nxt, p.log_scale + math.log(scale))
    made: list[tuple[torch.Tensor, Pass]] = []
    for name, offer in p.variants:
        for lam in offer(ctx, alpha[free], beta[free]):
            twin = next((q for seen, q in made if torch.equal(seen, lam)), None)
            if twin is not None:
                twin.variants.append((name, offer))
                break
            if (found := factor_certificate(gamma, lam)) is not None:
                lam, r = found
                k = fixed @ (vu.T * (lam / scale)[None, :])      # D_alpha V V_U^T S Lambda (normalized)
                k[free.nonzero()[:, 0], torch.arange(k.shape[1])] += 1.0
                b = torch.linalg.solve_triangular(r, k, upper=True, left=False)
                blocks = [fixed / math.sqrt(scale), b] if bool((alpha != 0).any()) else [b]
                thetas = {**p.thetas, index: torch.log(lam.detach()) - ctx.log_scale}
                made.append((lam, Pass([(name, offer)], _compress(torch.cat(blocks, dim=1)),
                                        p.log_scale + math.log(scale), thetas)))
                break
        else:
            raise InfeasibleCertificateError(f"no feasible multipliers at hidden layer {index} (local bound)")
    return [q for _, q in made]


def _compress(f: torch.Tensor) -> torch.Tensor:
    """A factor with at most as many columns as rows and the same F F^T (R^T of a QR of F^T)."""
    if f.shape[1] <= f.shape[0]:
        return f
    return torch.linalg.qr(f.T, mode="reduced" if f.requires_grad else "r")[1].T  # mode "r" has no backward
