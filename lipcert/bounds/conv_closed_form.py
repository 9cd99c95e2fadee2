"""ECLipsE-Fast on chains of stride-1 convolutions, one C x C block per frequency (docs/decisions.md 27).

On the circular grid a stride-1 convolution and channel-wise multipliers Lambda = diag(lambda_c) (x) I
are block-diagonal under the 2-D DFT, so Theorem 1's recursion (math.md section 3, slopes [0, 1])
runs on the frequency blocks::

    Gamma_k(w) = K_k(w) M_{k-1}(w)^{-1} K_k(w)^H,     M_k(w) = 2 Lambda_k - Lambda_k Gamma_k(w) Lambda_k,

with K_k(w) the kernel's symbol; ECLipsE-Fast's Lambda_k = I / max_w lambda_max(Gamma_k(w)) is
channel-wise, so this is the dense ECLipsE-Fast pass without any n x n matrix.  The dense tail after
the convolutions is joined exactly through the FFT of its first matrix's rows.  Real kernels give
Gamma(-w) = conj Gamma(w): only the frequencies of ``rfft2`` are kept, conjugate pairs counted twice.
A zero-padded chain is bounded through its circular surrogate on a grid large enough that padding
reads land on non-real positions: the surrogate's certificate is >= the zero-padded net's dense
certificate with the same multipliers (a Schur-complement induction, decisions 27).
"""

from __future__ import annotations

import math

import torch

from ..errors import (
    InfeasibleCertificateError,
    InvalidParameterError,
    UnsupportedConvGeometryError,
    UnsupportedSlopesError,
)
from ..network import Network, require_network
from ..operators import Conv2dOperator
from .closed_form import closed_form_slopes, single_rule
from .recursion import RecursionResult
from .rules import Rule

_MARGIN_EPS_PER_DIM = 4  # the Cholesky margin of recursion.shrink, per block dimension
_FALLBACK_FACTORS = (1.0, 1 - 1e-6, 0.99, 0.9)  # lambda = factor / lambda_max if the Cholesky test fails


def circular_symbol(op: Conv2dOperator) -> tuple[torch.Tensor, torch.Tensor]:
    """K(w) of a stride-1 circular conv for the ``rfft2`` frequencies, and each frequency's count (1 or 2).

    K(w)[o, c] = sum_{a, b} K[o, c, a, b] exp(2 pi i (w_h e_a / N_h + w_w e_b / N_w)), e_a = d a - before;
    shapes (N_h (N_w // 2 + 1), C_out, C_in) complex128 and (N_h (N_w // 2 + 1),) float64.
    """
    _, n_h, n_w = op.in_shape
    top, _, left, _ = op.padding
    kh, kw = op.kernel.shape[2:]
    e_h = torch.arange(kh, dtype=torch.float64) * op.dilation[0] - top
    e_w = torch.arange(kw, dtype=torch.float64) * op.dilation[1] - left
    f_h = torch.arange(n_h, dtype=torch.float64)
    f_w = torch.arange(n_w // 2 + 1, dtype=torch.float64)
    ph = torch.polar(torch.ones(n_h, kh, dtype=torch.float64), 2 * math.pi * torch.outer(f_h, e_h) / n_h)
    pw = torch.polar(torch.ones(len(f_w), kw, dtype=torch.float64), 2 * math.pi * torch.outer(f_w, e_w) / n_w)
    blocks = torch.einsum("ocab,ha,wb->hwoc", op.kernel.to(torch.complex128), ph, pw)
    counts = torch.full((n_h, len(f_w)), 2.0, dtype=torch.float64)
    counts[:, 0] = 1.0
    if n_w % 2 == 0:
        counts[:, -1] = 1.0
    return blocks.reshape(-1, *blocks.shape[2:]), counts.flatten()


def _conv_chain(net: Network) -> tuple[list[Conv2dOperator], tuple[int, int] | None]:
    """The leading stride-1 convolutions that keep the grid, as circular convs, and the zero-padded grid.

    Circular layers are returned as they are (grid None).  A chain of zero-padded layers on H x W is
    returned as its circular surrogate on N_h x N_w = (H + max top/bottom, W + max left/right), where
    every read of a padding position lands on a non-real grid position (docs/decisions.md 27); the
    real positions are the top-left H x W.  Every later layer must be dense.
    """
    ops = list(net.operators) if net.operators else [None] * net.depth
    convs: list[Conv2dOperator] = []
    for k, op in enumerate(ops):
        if op is None:
            break
        if not isinstance(op, Conv2dOperator):
            raise UnsupportedConvGeometryError(f"layer {k + 1}: {type(op).__name__} is not a Conv2dOperator")
        if op.stride != (1, 1) or op.groups != 1 or op.adjoint or op.output_shape[1:] != op.input_shape[1:]:
            raise UnsupportedConvGeometryError(
                f"layer {k + 1} ({op.describe()}): the per-frequency closed forms handle stride-1, ungrouped "
                "convolutions that keep the grid; bound this network with net.densified() or naive")
        convs.append(op)
    if not convs:
        raise UnsupportedConvGeometryError("the network does not start with a convolution operator")
    if any(op is not None for op in ops[len(convs):]) or len(convs) == net.depth:
        raise UnsupportedConvGeometryError(f"layers after the first {len(convs)} must be dense (a flatten, then "
                                           "linear layers, the last one included)")
    circular = {op.circular for op in convs}
    if circular == {True}:
        return convs, None
    if len(circular) > 1:
        raise UnsupportedConvGeometryError("the conv chain mixes circular and zero padding; the per-frequency "
                                           "closed forms need one grid for all its layers")
    _, h, w = convs[0].in_shape
    n_h = h + max(max(op.padding[0], op.padding[1]) for op in convs)
    n_w = w + max(max(op.padding[2], op.padding[3]) for op in convs)
    surrogate = [Conv2dOperator.conv(op.kernel, (op.in_shape[0], n_h, n_w), padding=op.padding,
                                     dilation=op.dilation, circular=True) for op in convs]
    return surrogate, (h, w)


def channel_gershgorin(gamma: torch.Tensor) -> torch.Tensor:
    """r_c = max_w sum_c' |Gamma(w)[c, c']| for Hermitian blocks Gamma of shape (F, C, C): Gamma(w) <= diag(r)."""
    return gamma.abs().sum(-1).amax(0)


def _channel_multipliers(rule: Rule, gamma: torch.Tensor) -> torch.Tensor:
    """Per-channel lambda (normalized units: Gamma(w) has max_w lambda_max 1) of SN(c) or frequency-block GC(c).

    GC(c): lambda_c = c / r_c with r_c = max_w sum_c' |Gamma(w)[c, c']|.  Gershgorin on each Hermitian block
    gives Gamma(w) <= diag(r(w)) <= diag(r), so 2 Lambda^{-1} - Gamma(w) > 0 for c < 2 (decisions 27);
    r_c is at most the dense GC row sum of any neuron of channel c.
    """
    if rule.kind == "sn":
        return torch.full((gamma.shape[-1],), rule.c, dtype=torch.float64)
    if rule.kind == "gc":
        return rule.c / channel_gershgorin(gamma)
    raise InvalidParameterError(f"rule {rule.name}: the per-frequency pass has sn(c) and gc(c) only")


def _factor(gamma: torch.Tensor, rule: Rule, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The first feasible candidate of ``rule``'s fallbacks, then of SN(f), f < 1: label, lambda and
    the lower factors of M(w) = Lambda shrink(2 Lambda^{-1} - Gamma(w)) Lambda (normalized units).

    The margin-reduced M is the one carried forward (monotonicity, math.md (Mo)).
    """
    size = gamma.shape[-1]
    delta = _MARGIN_EPS_PER_DIM * size * torch.finfo(torch.float64).eps
    candidates = [*rule.fallbacks(), *(Rule("sn", f) for f in _FALLBACK_FACTORS)]
    for cand in candidates:
        lam = _channel_multipliers(cand, gamma)
        if not (bool(torch.isfinite(lam).all()) and bool((lam > 0).all())):
            continue
        c = torch.diag(2.0 / lam).to(gamma.dtype) - gamma
        c.diagonal(dim1=-2, dim2=-1).mul_(1 - delta)
        low, info = torch.linalg.cholesky_ex(c)
        if int(info.abs().max()) == 0 and bool(torch.isfinite(low.diagonal(dim1=-2, dim2=-1).real).all()):
            return cand.name, lam, lam[:, None].to(low.dtype) * low
    raise InfeasibleCertificateError(f"hidden layer {index}: no per-frequency Cholesky test passed")


def eclipse_fast(net: Network) -> RecursionResult:
    """ECLipsE-Fast (SN(1)) of a stride-1 conv chain + dense tail: :func:`single_rule` with SN(1)."""
    return single_rule_conv(net, Rule("sn", 1.0))


def combined(net: Network, rules: tuple[Rule, ...] = (Rule("sn", 1.0), Rule("gc", 1.5), Rule("gc", 1.7),
                                                       Rule("gc", 1.99))) -> RecursionResult:
    """The least of :func:`single_rule_conv` over ``rules`` (each a certificate); ``extras["passes"]`` has every value."""
    results = {rule.name: single_rule_conv(net, rule) for rule in rules}
    best = min(results.values(), key=lambda r: r.value)
    best.extras["passes"] = {name: r.value for name, r in results.items()}
    return best


def single_rule_conv(net: Network, rule: Rule) -> RecursionResult:
    """Theorem 1 with per-channel multipliers from ``rule`` (SN(c) or GC(c)) on a stride-1 conv chain + dense tail.

    Circular padding: equal to the dense pass on ``net.densified()`` with the same multipliers, up to
    rounding (for SN(1): dense ECLipsE-Fast, math.md 4.2).  Zero padding: the pass of the circular
    surrogate, >= the dense pass with the same multipliers, which restricted to the real positions
    certify the zero-padded net.  Memory is one (frequencies x C x C) complex array per layer.
    Multipliers are reported per neuron at true scale, as :func:`.recursion.run` does; the dense
    tail runs :func:`.closed_form.single_rule` with the same rule.  Raises
    :class:`UnsupportedConvGeometryError` for other geometries and :class:`UnsupportedSlopesError`
    unless the conv layers' slopes are [0, 1] after the closed forms' relaxation.
    """
    net = require_network(net, "conv_closed_form.single_rule_conv", operators=True)
    convs, real = _conv_chain(net)
    slopes = closed_form_slopes(net.slopes())
    for k in range(len(convs)):
        alpha, beta = slopes[k]
        if not (bool((alpha == 0).all()) and bool((beta == 1).all())):
            raise UnsupportedSlopesError(f"hidden layer {k + 1}: the per-frequency pass needs slopes in [0, 1] "
                                         f"({net.activation_names[k]})")
    _channel_multipliers(rule, torch.zeros(1, 1, 1))  # an unsupported rule fails before any work
    low: torch.Tensor | None = None  # lower factors of the normalized M_{k-1}(w); None = identity
    log_scale = 0.0
    multipliers: list[torch.Tensor] = []
    labels: list[str] = []
    for k, op in enumerate(convs):
        sym, _ = circular_symbol(op)
        y = sym.mH if low is None else torch.linalg.solve_triangular(low, sym.mH, upper=False)
        gamma = y.mH @ y
        gamma = (gamma + gamma.mH) / 2
        top = float(torch.linalg.eigvalsh(gamma)[..., -1].max())
        if top <= 0.0:
            n_out = net.output_dim
            return RecursionResult(torch.zeros(n_out, n_out, dtype=torch.float64), 0.0, multipliers, labels,
                                   [f"layer {k + 1}: constant"])
        log_scale += math.log(top)
        label, lam, low = _factor(gamma / top, rule, k + 1)
        positions = op.shape[0] // op.output_shape[0] if real is None else real[0] * real[1]
        multipliers.append(torch.repeat_interleave(lam, positions) * math.exp(-log_scale))
        labels.append(label)
    result = _join_tail(net, convs[-1], real, low, log_scale, multipliers, labels, slopes[len(convs):], rule)
    if real is not None:
        result.notes.insert(0, f"zero padding: circular surrogate on the {convs[0].in_shape[1]}x{convs[0].in_shape[2]} "
                               "grid (docs/decisions.md 27)")
    return result


def _join_tail(net: Network, last_conv: Conv2dOperator, real: tuple[int, int] | None, low: torch.Tensor | None,
               log_scale: float,
               multipliers: list[torch.Tensor], labels: list[str],
               tail_slopes: list[tuple[torch.Tensor, torch.Tensor]], rule: Rule) -> RecursionResult:
    """G_L through the tail: Z^T Z = V M^{-1} V^T (normalized), Z the weighted real and imaginary parts of M(w)^{-1/2} V^(w)."""
    assert low is not None
    c, n_h, n_w = last_conv.output_shape
    tail = list(net.weights[len(multipliers):])
    v = tail[0].reshape(tail[0].shape[0], c, *(real or (n_h, n_w)))
    if real is not None:  # zero-extended onto the surrogate's grid: V P
        v = torch.nn.functional.pad(v, (0, n_w - real[1], 0, n_h - real[0]))
    v_hat = torch.fft.rfft2(v, norm="ortho").reshape(v.shape[0], c, -1)
    y = torch.linalg.solve_triangular(low, v_hat.permute(2, 1, 0), upper=False)   # (F, C, n)
    _, counts = circular_symbol(last_conv)
    y = y * counts.sqrt()[:, None, None]
    z = torch.cat([y.real, y.imag], dim=1).reshape(-1, v.shape[0])
    if len(tail) == 1:
        gram = z.T @ z
        return RecursionResult((gram + gram.T) / 2, log_scale, multipliers, labels)
    rest = single_rule([z.T] + tail[1:], tail_slopes, rule)
    return RecursionResult(rest.gram, rest.log_scale + log_scale,
                           multipliers + [m * math.exp(-log_scale) for m in rest.multipliers],
                           labels + rest.labels, rest.notes)
