"""The closed-form rules on conv chains, one C x C block per frequency (docs/decisions.md 27, 32, 33).

On the circular grids of :mod:`.conv_grid` a convolution and channel-wise multipliers
Lambda = diag(lambda_c) (x) I are block-diagonal under the 2-D DFT, so Theorem 1's recursion
(math.md section 3, slopes [0, 1]) runs on the frequency blocks::

    Gamma_k(v) = s^{-1} sum_{w_m -> v} K_k(w_m) M_{k-1}(w_m)^{-1} K_k(w_m)^H,
    M_k(v)     = 2 Lambda_k - Lambda_k Gamma_k(v) Lambda_k,

with K_k(w) the kernel's symbol on the input grid and the sum over the s_h s_w input frequencies
that a stride aliases to v (one term without stride).  SN(c), GC(c), Shift(c) and GCs(c) pick
channel-wise Lambda_k from the blocks; the dense tail after the convolutions is joined exactly
through the DFT of its first matrix's rows.  Circular chains give the dense pass with the same
multipliers (ECLipsE-Fast and Shift: the dense rule itself); zero-padded chains give the pass of a
circular surrogate, >= the zero-padded net's dense certificate with the same multipliers.

Rounding (decisions 33): every Gamma block is raised by a bound on its float64 error (kernel symbol,
triangular solve, Gram product, aliasing, normalization) times the identity, the Cholesky test of
each block is taken with a margin covering its backward error, and the last factor's certified
lambda_min carries the error of the tail's DFT into G_L, so the value is a bound for the exact network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import (
    InfeasibleCertificateError,
    InvalidParameterError,
    UnsupportedSlopesError,
)
from ..network import Network, require_network
from ..rounding import UNIT_ROUNDOFF, gamma
from . import matrix_free
from .closed_form import closed_form_slopes, single_rule
from .conv_grid import (
    ChainPlan,
    GridLayer,
    alias_index,
    half_counts,
    plan_chain,
    tail_dft,
)
from .recursion import RecursionResult
from .rules import DEFAULT_RULE_SET, Rule

_FALLBACK_FACTORS = (1.0, 1 - 1e-6, 0.99, 0.9)  # SN(f) with f <= 1 if the rule and its fallbacks fail
_EIGVALSH_ERROR = 8.0  # backward error of eigvalsh: |fl(lambda) - lambda| <= 8 n eps max|lambda| (eigen.py)
METHODS = ("eclipse-fast", "sn", "gc", "shift", "gcs", "combined")
"""The methods of :func:`lipcert.lipschitz` with a per-frequency form."""


@dataclass(frozen=True)
class _Factor:
    """M(w) = low(w) low(w)^H (normalized units) and a certified lower bound mu(w) of its lambda_min."""

    low: torch.Tensor
    mu: torch.Tensor


def channel_gershgorin(gamma_blocks: torch.Tensor) -> torch.Tensor:
    """r_c = max_w sum_c' |Gamma(w)[c, c']| for Hermitian blocks of shape (F, C, C): Gamma(w) <= diag(r)."""
    return gamma_blocks.abs().sum(-1).amax(0)


def _top(blocks: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(blocks)[..., -1].max())


def _channel_multipliers(rule: Rule, g: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-channel lambda of ``rule`` from the Hermitian blocks g (F, C, C) with frequency multiplicities ``counts``.

    SN(c): c / max_w lambda_max(g(w)).  GC(c): c / r_c (:func:`channel_gershgorin`; Gamma(w) <= diag(r)).
    Shift(c): 2 / (d_c + c max_w lambda_max(g(w) - diag(d))) with d_c the diagonal of the dense Gamma at
    every position of channel c (the mean of g(w)_cc over the full spectrum).  GCs(c): c / (r_c
    max_w lambda_max(R^-1/2 g(w) R^-1/2)).  Feasibility is decided by the caller's Cholesky test.
    """
    c = rule.c
    if rule.kind == "sn":
        return torch.full((g.shape[-1],), c / _top(g), dtype=torch.float64)
    if rule.kind in ("gc", "gcs"):
        r = channel_gershgorin(g)
        if rule.kind == "gc":
            return c / r
        s = r.rsqrt().to(g.dtype)
        return c / (r * _top(g * s[:, None] * s[None, :]))
    if rule.kind == "shift":
        d = (counts[:, None] * g.diagonal(dim1=-2, dim2=-1).real).sum(0) / counts.sum()
        return 2.0 / (d + c * _top(g - torch.diag_embed(d.to(g.dtype))))
    raise InvalidParameterError(f"rule {rule.name}: the per-frequency pass has sn, gc, shift and gcs")


_RULE_KINDS = ("sn", "gc", "shift", "gcs")


def _factor(g: torch.Tensor, counts: torch.Tensor, rule: Rule, index: int) -> tuple[str, torch.Tensor, _Factor]:
    """The first candidate (``rule``'s fallbacks, then SN(f), f <= 1) whose blocks pass the Cholesky test.

    C(w) = 2 Lambda^{-1} - g(w) is factored with the absolute margin tau(w) = (gamma_{C+1} + 3u) 1.02 C
    max_i C_ii(w) + 3u max_i 2 / lambda_i, which covers Cholesky's backward error (gamma_{C+1} |L| |L|^H,
    whose norm is at most the trace), the rounding of 2 / lambda - g_ii and of the scaling by lambda; the
    carried low = Lambda L then satisfies low low^H <= Lambda (2 Lambda^{-1} - g) Lambda exactly.
    """
    size = g.shape[-1]
    u = UNIT_ROUNDOFF
    for cand in [*rule.fallbacks(), *(Rule("sn", f) for f in _FALLBACK_FACTORS)]:
        lam = _channel_multipliers(cand, g, counts)
        if not (bool(torch.isfinite(lam).all()) and bool((lam > 0).all())):
            continue
        mat = torch.diag(2.0 / lam).to(g.dtype) - g
        diag = mat.diagonal(dim1=-2, dim2=-1)
        tau = (gamma(size + 1) + 3 * u) * 1.02 * size * diag.real.amax(-1) + 3 * u * float((2.0 / lam).max())
        diag.sub_(tau[:, None])
        low, info = torch.linalg.cholesky_ex(mat)
        if int(info.abs().max()) != 0 or not bool(torch.isfinite(low.diagonal(dim1=-2, dim2=-1).real).all()):
            continue
        low = lam[:, None].to(low.dtype) * low
        mu = _lambda_min(low)
        if bool((mu > 0).all()):
            return cand.name, lam, _Factor(low, mu)
    raise InfeasibleCertificateError(f"hidden layer {index}: no per-frequency Cholesky test passed")


def _lambda_min(low: torch.Tensor) -> torch.Tensor:
    """Certified lower bound of lambda_min(low low^H) per block: eigvalsh of the rounded product, less its
    backward error and the product's rounding gamma_{2C+4} ||low||_F^2."""
    size = low.shape[-1]
    values = torch.linalg.eigvalsh(low @ low.mH)
    eps = torch.finfo(torch.float64).eps
    return (values[..., 0] - _EIGVALSH_ERROR * size * eps * values[..., -1].abs()
            - gamma(2 * size + 4) * low.flatten(1).abs().square().sum(1))


def _solve(factor: _Factor | None, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = low^{-1} rhs per block, 1 / mu, and eta = gamma_{4C+8} ||low||_F / sqrt(mu): ||fl(Y) - Y|| <= eta ||fl(Y)||_F.

    (The computed Y solves (low + D) Y = rhs with |D| <= gamma |low|, so Y_exact - Y = low^{-1} D Y.)
    """
    if factor is None:
        ones = torch.ones(rhs.shape[0], dtype=torch.float64)
        return rhs, ones, torch.zeros_like(ones)
    # a conjugate view as right-hand side takes a path 1000x slower (torch 2.13): materialize it
    y = torch.linalg.solve_triangular(factor.low, rhs.resolve_conj().contiguous(), upper=False)
    size = factor.low.shape[-1]
    eta = gamma(4 * size + 8) * factor.low.flatten(1).abs().square().sum(1).sqrt() / factor.mu.sqrt()
    return y, 1.0 / factor.mu, eta


def _layer_gamma(layer: GridLayer, factor: _Factor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gamma(v) blocks on the output grid (F_out, C_out, C_out) and per block a bound e(v) with
    Gamma_exact(v) <= Gamma(v) + e(v) I (kernel symbol error, solve, Gram product, aliasing)."""
    sym = layer.symbol()
    kappa, eps_k = layer.symbol_bounds()
    y, inv_mu, eta = _solve(factor, sym.mH)
    term = y.mH @ y
    term = (term + term.mH) / 2
    y_f2 = y.flatten(1).abs().square().sum(1)
    ci = layer.channels[1]
    err = (2 * kappa * eps_k + eps_k**2) * inv_mu + (2 * eta + eta**2 + gamma(4 * ci + 8)) * y_f2
    if layer.stride != (1, 1):
        index, conj = alias_index(layer.grid, layer.stride)
        parts = term[index]
        parts = torch.where(conj[..., None, None], parts.conj(), parts)
        term = parts.mean(1)
        err = err[index].mean(1) + gamma(index.shape[1] + 1) * term.flatten(1).abs().sum(1)
    return term, err


def _check_slopes(net: Network, plan: ChainPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    slopes = closed_form_slopes(net.slopes())
    for k in range(min(len(plan.layers), len(slopes))):
        alpha, beta = slopes[k]
        if not (bool((alpha == 0).all()) and bool((beta == 1).all())):
            raise UnsupportedSlopesError(f"hidden layer {k + 1}: the per-frequency pass needs slopes in [0, 1] "
                                         f"({net.activation_names[k]})")
    return slopes


def check_chain(net: Network) -> None:
    """Raise UnsupportedConvGeometryError or UnsupportedSlopesError when ``net`` has no per-frequency pass."""
    _check_slopes(net, plan_chain(net))


def single_rule_conv(net: Network, rule: Rule, plan: ChainPlan | None = None) -> RecursionResult:
    """Theorem 1 with per-channel multipliers from ``rule`` on a conv chain + dense tail, per frequency.

    Circular chains whose grids the strides divide: the dense pass on ``net.densified()`` with the same
    multipliers (up to rounding, which is bounded and added).  Zero padding: the pass of the circular
    surrogate, >= the dense pass with the same multipliers, which restricted to the real positions
    certify the zero-padded net (``notes`` says so).  Multipliers are reported per neuron at true scale;
    the dense tail runs :func:`.closed_form.single_rule` with the same rule.  Raises
    :class:`~lipcert.errors.UnsupportedConvGeometryError` (no common grid: :func:`.conv_grid.plan_chain`)
    and :class:`~lipcert.errors.UnsupportedSlopesError` (conv layers' slopes not [0, 1]).
    """
    net = require_network(net, "conv_closed_form.single_rule_conv", operators=True)
    plan = plan_chain(net) if plan is None else plan
    slopes = _check_slopes(net, plan)
    if rule.kind not in _RULE_KINDS:
        raise InvalidParameterError(f"rule {rule.name}: the per-frequency pass has sn, gc, shift and gcs")
    factor: _Factor | None = None
    log_scale = 0.0
    multipliers: list[torch.Tensor] = []
    labels: list[str] = []
    hidden = plan.layers[:-1] if len(plan.layers) == net.depth else plan.layers  # all convolutions: the last is L
    for k, layer in enumerate(hidden):
        g, err = _layer_gamma(layer, factor)
        top = _top(g)
        if top <= 0.0:
            n_out = net.output_dim
            return RecursionResult(torch.zeros(n_out, n_out, dtype=torch.float64), 0.0, multipliers, labels,
                                   [f"layer {k + 1}: constant"])
        g = g / top
        err = err / top + UNIT_ROUNDOFF * g.flatten(1).abs().square().sum(1).sqrt()
        g.diagonal(dim1=-2, dim2=-1).add_(err[:, None])
        log_scale += math.log(top)
        label, lam, factor = _factor(g, half_counts(layer.out_grid), rule, k + 1)
        positions = layer.real_out[0] * layer.real_out[1]
        multipliers.append(torch.repeat_interleave(lam, positions) * math.exp(-log_scale))
        labels.append(label)
    if len(hidden) < len(plan.layers):
        result = _last_conv(plan.layers[-1], factor, log_scale, multipliers, labels)
    else:
        assert factor is not None
        result = _join_tail(net, plan.layers[-1], factor, log_scale, multipliers, labels, slopes[len(hidden):], rule)
    result.extras["grids"] = [layer.grid for layer in plan.layers]
    if not plan.exact:
        grid = plan.layers[0].grid
        result.notes.insert(0, f"zero padding or a restricted grid: circular surrogate on the {grid[0]}x{grid[1]} "
                               "grid (docs/decisions.md 27)")
    return result


def _last_conv(last: GridLayer, factor: _Factor | None, log_scale: float, multipliers: list[torch.Tensor],
               labels: list[str]) -> RecursionResult:
    """G_L <= top I for a chain that ends with a convolution (a residual branch): top = max_v of lambda_max
    of Gamma_L(v) raised by eigvalsh's backward error 8 C eps max|lambda| and e_L(v) (normalized units), the
    same majorant as a hidden layer's Gamma (decisions 33, 51).  The Gram is the 1 x 1 matrix [[top]]
    (``extras["scalar_gram"]``): a bound on Lip(f), not on margins of the feature map's entries."""
    g, err = _layer_gamma(last, factor)
    values = torch.linalg.eigvalsh(g)
    eps = torch.finfo(torch.float64).eps
    top = values[..., -1] + _EIGVALSH_ERROR * g.shape[-1] * eps * values.abs().amax(-1) + err
    return RecursionResult(torch.tensor([[max(float(top.max()), 0.0)]], dtype=torch.float64), log_scale,
                           multipliers, labels, extras={"scalar_gram": True})


def _join_tail(net: Network, last: GridLayer, factor: _Factor, log_scale: float, multipliers: list[torch.Tensor],
               labels: list[str], tail_slopes: list[tuple[torch.Tensor, torch.Tensor]], rule: Rule) -> RecursionResult:
    """G_L through the tail: Z^T Z + e I >= V M^{-1} V^T (normalized), Z the weighted real and imaginary parts
    of M(w)^{-1/2} V^(w); e bounds the DFT's, the solves' and the product's rounding (decisions 33)."""
    tail = list(net.weights[len(multipliers):])
    v_hat, eps_v = tail_dft(tail[0], last.real_out, last.out_grid)
    y, inv_mu, eta = _solve(factor, v_hat)
    counts = half_counts(last.out_grid)
    v_norm = float(tail[0].norm())
    err = ((2 * v_norm * eps_v + eps_v**2) * float(inv_mu.max())
           + float((counts * (2 * eta + eta**2) * y.flatten(1).abs().square().sum(1)).sum()))
    y = y * counts.sqrt()[:, None, None]
    z = torch.cat([y.real, y.imag], dim=1).reshape(-1, y.shape[-1])
    err += gamma(z.shape[0] + 4) * float(z.square().sum())
    if len(tail) == 1:
        gram = z.T @ z
        gram = (gram + gram.T) / 2
        gram.diagonal().add_(err)
        return RecursionResult(gram, log_scale, multipliers, labels)
    z = torch.cat([z, math.sqrt(err) * torch.eye(z.shape[1], dtype=torch.float64)])  # Z^T Z + e I
    rest = single_rule([z.T] + tail[1:], tail_slopes, rule)
    return RecursionResult(rest.gram, rest.log_scale + log_scale,
                           multipliers + [m * math.exp(-log_scale) for m in rest.multipliers],
                           labels + rest.labels, rest.notes)


def eclipse_fast(net: Network) -> RecursionResult:
    """ECLipsE-Fast (SN(1)) of a conv chain + dense tail, per frequency (:func:`single_rule_conv`)."""
    return single_rule_conv(net, Rule("sn", 1.0))


def combined(net: Network, rules: Sequence[Rule] = DEFAULT_RULE_SET) -> dict[str, RecursionResult]:
    """One per-frequency pass per rule (each a certificate; the caller reports the least)."""
    plan = plan_chain(net)
    return {rule.name: single_rule_conv(net, rule, plan) for rule in rules}


def certificates(net: Network, method: str, options: Mapping[str, Any]) -> dict[str, RecursionResult]:
    """The per-frequency certificates of one :func:`lipcert.lipschitz` method (a name of :data:`METHODS`).

    ``combined`` runs every rule of ``options["rules"]`` (no pruning: the passes are cheap) and the
    matrix-free naive product, as the dense combined does; a single rule on a zero-padded or restricted
    grid also gets the naive product, whose small-grid norms can be tighter than the surrogate
    (decisions 27); the least is the bound.
    """
    plan = plan_chain(net)
    if method == "combined":
        out = {rule.name: single_rule_conv(net, rule, plan) for rule in options["rules"]}
    else:
        rule = Rule("sn", 1.0) if method == "eclipse-fast" else Rule(method, options["c"])
        out = {rule.name: single_rule_conv(net, rule, plan)}
    if method == "combined" or not plan.exact:
        out["naive"] = matrix_free.naive(net)
    return out
