"""The residual-block certificate per frequency, for identity blocks of stride-1 convolutions (decisions 52).

For h(x) = x + G sigma(W x + b), W and G stride-1 convolutions (a branch conv -> ReLU-type -> conv with as
many outputs as inputs) and channel-wise multipliers Lambda', the working form (ii) of entry 30 with S = I
and slopes [0, 1] is rho^2 = lambda_max(I + H M^{-1} H^T), M = 2 Lambda' - Lambda' Gamma Lambda', Gamma = W W^T,
H = W^T Lambda' + G.  On the branch's circular grid (:func:`.conv_grid.plan_chain`) every factor is
block-diagonal under the DFT: Gamma(v) = K_W(v) K_W(v)^H and H(v) = K_W(v)^H Lambda' + K_G(v), the symbol of
one convolution whose taps are G's and W's flipped, transposed taps scaled by Lambda' (offsets negated), so
rho^2 = 1 + max_v lambda_max(H(v) M(v)^{-1} H(v)^H), computed with the per-frequency pass's layer step and
its rounding majorants (:mod:`.conv_closed_form`, decisions 33).  Zero padding: the zero-padded block is
P h_c P^T (+ a constant) with h_c the circular block whose non-real hidden neurons are masked (slope 0,
inside [0, 1]) and P the restriction to the real positions, so h_c's rho bounds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfeasibleCertificateError, UnsupportedConvGeometryError, UnsupportedSlopesError
from ..graph import Residual
from ..operators import Conv2dOperator
from ..rounding import UNIT_ROUNDOFF, certified_root
from .conv_closed_form import _EIGVALSH_ERROR, _factor, _layer_gamma, _top, check_chain
from .conv_grid import GridLayer, half_counts, plan_chain
from .rules import Rule


def applies(block: Residual) -> bool:
    """True for an identity block whose branch is conv -> activation -> conv, both stride-1 convolutions."""
    g = block.branch
    if block.shortcut is not None or g.depth != 2 or not g.operators:
        return False
    ops = list(g.operators)
    return all(isinstance(op, Conv2dOperator) and op.stride == (1, 1) and not op.adjoint for op in ops)


def _union(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(a) | set(b)))


def _h_layer(w: GridLayer, g: GridLayer, scale: torch.Tensor) -> tuple[GridLayer, float]:
    """The convolution H = W^T diag(scale) + G on the hidden grid, and delta >= ||H(v) - fl-kernel symbol||
    (3 roundings per tap entry: the product by scale, the sum; ||.||_2 <= sum_t ||.||_F)."""
    offsets = (_union(g.offsets[0], tuple(-e for e in w.offsets[0])),
               _union(g.offsets[1], tuple(-e for e in w.offsets[1])))
    kernel = torch.zeros(g.channels[0], g.channels[1], len(offsets[0]), len(offsets[1]), dtype=torch.float64)
    wt = w.kernel.transpose(0, 1) * scale[None, :, None, None]  # (C, C1, kh, kw): W^T Lambda'
    for a, e_a in enumerate(g.offsets[0]):
        for b, e_b in enumerate(g.offsets[1]):
            kernel[:, :, offsets[0].index(e_a), offsets[1].index(e_b)] += g.kernel[:, :, a, b]
    for a, e_a in enumerate(w.offsets[0]):
        for b, e_b in enumerate(w.offsets[1]):
            kernel[:, :, offsets[0].index(-e_a), offsets[1].index(-e_b)] += wt[:, :, a, b]
    taps = g.kernel.flatten(2).norm(dim=(0, 1)).sum() + wt.flatten(2).norm(dim=(0, 1)).sum()
    delta = 3.03 * UNIT_ROUNDOFF * float(taps)
    return GridLayer(kernel, g.grid, (1, 1), offsets, g.real_in, g.real_out), delta


def block_rho(block: Residual, rules: Sequence[Rule]) -> tuple[float, str] | None:
    """(certified rho >= Lip(block), the rule) of the best of ``rules`` per frequency; None when the block is not
    an identity block of two stride-1 convolutions on a common circular grid with slopes in [0, 1]."""
    if not applies(block):
        return None
    try:
        check_chain(block.branch)
        plan = plan_chain(block.branch)
    except (UnsupportedConvGeometryError, UnsupportedSlopesError):
        return None
    w, g = plan.layers
    gam, err = _layer_gamma(w, None)
    top = _top(gam)
    if top <= 0.0:
        return 1.0, "constant branch"
    gam = gam / top
    err = err / top + UNIT_ROUNDOFF * gam.flatten(1).abs().square().sum(1).sqrt()
    gam.diagonal(dim1=-2, dim2=-1).add_(err[:, None])
    best: tuple[float, str] | None = None
    for rule in rules:
        try:
            label, lam, factor = _factor(gam, half_counts(w.out_grid), rule, 1)
        except InfeasibleCertificateError:
            continue
        h, delta = _h_layer(w, g, lam / top)  # Lambda' = lam / top at true scale: M = M_normalized / top
        blocks, h_err = _layer_gamma(h, factor)
        kappa = h.symbol_bounds()[0]
        h_err = h_err + (2 * kappa * delta + delta**2) / factor.mu
        values = torch.linalg.eigvalsh(blocks)
        eps = torch.finfo(torch.float64).eps
        peak = values[..., -1] + _EIGVALSH_ERROR * blocks.shape[-1] * eps * values.abs().amax(-1) + h_err
        rho_sq = 1.0 + top * max(float(peak.max()), 0.0) * (1 + 4 * UNIT_ROUNDOFF)
        rho = float(certified_root(rho_sq, 0.0))
        if best is None or rho < best[0]:
            best = (rho, label)
    return best
