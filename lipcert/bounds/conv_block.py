"""The residual-block certificate per frequency, for conv blocks h(x) = S x + G sigma(W x + b) (decisions 52).

S the identity or a convolution with W's stride, W a convolution, G a stride-1 convolution (a ResNet
BasicBlock), channel-wise multipliers Lambda' and slopes [0, 1]: the working form (ii) of entry 30 is
rho^2 = lambda_max(S S^T + H M^{-1} H^T), M = 2 Lambda' - Lambda' Gamma Lambda', Gamma = W W^T,
H = S W^T Lambda' + G.  On the branch's circular grid (:func:`.conv_grid.plan_chain`) S S^T and S W^T are
stride-1 convolutions on the output grid (taps K_A,a K_B,b^T at offset (e_a - e_b) / s for the tap pairs whose
offsets differ by a multiple of the stride), so every factor is block-diagonal under the DFT and
rho^2 = max_v lambda_max(S S^T(v) + H(v) M(v)^{-1} H(v)^H), H(v) the symbol of one convolution, computed with
the per-frequency pass's layer step and its rounding majorants (:mod:`.conv_closed_form`, decisions 33).
Zero padding: the zero-padded block is P h_c P_in^T (+ a constant) with h_c the circular block whose non-real
hidden neurons are masked (slope 0, inside [0, 1]), P the restriction to the real positions and P_in^T the
isometric embedding, so h_c's rho bounds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfeasibleCertificateError, UnsupportedConvGeometryError, UnsupportedSlopesError
from ..graph import Residual
from ..operators import Conv2dOperator
from ..rounding import UNIT_ROUNDOFF, certified_root, gamma
from .conv_closed_form import _EIGVALSH_ERROR, _factor, _layer_gamma, _top, check_chain
from .conv_grid import GridLayer, _axis_need, _grid_layer, half_counts, plan_chain
from .rules import Rule


def applies(block: Residual) -> bool:
    """True for a block whose branch is conv -> activation -> stride-1 conv and whose shortcut is the identity or
    a convolution with the first conv's stride (a ResNet BasicBlock without BatchNorm, or with it folded)."""
    g = block.branch
    if g.depth != 2 or not g.operators or any(not isinstance(op, Conv2dOperator) or op.adjoint for op in g.operators):
        return False
    w, second = g.operators
    assert w is not None and second is not None
    if second.stride != (1, 1):
        return False
    s = block.shortcut
    if s is None:
        return w.stride == (1, 1)
    return isinstance(s, Conv2dOperator) and not s.adjoint and s.stride == w.stride and s.in_shape == w.in_shape


def _identity(w: Conv2dOperator) -> Conv2dOperator:
    eye = torch.eye(w.in_shape[0], dtype=torch.float64)[:, :, None, None]
    return Conv2dOperator.conv(eye, w.in_shape)


def _product_taps(a: GridLayer, b: GridLayer) -> tuple[dict[tuple[int, int], torch.Tensor], float]:
    """A B^T for two convolutions with one input grid and stride: a stride-1 convolution on their output grid,
    (A B^T y)[j] = sum K_A,a K_B,b^T y[j + (e_a - e_b) / s] over the tap pairs whose offsets differ by a multiple
    of s (on a circular grid with s | N no other pair meets).  Returns the taps by offset and delta >= the
    spectral norm of the rounding error of every symbol built from them (gamma_{C_in + pairs + 2} (sum_a
    ||K_A,a||_F) (sum_b ||K_B,b||_F): products, sums of pairs)."""
    (sh, sw) = a.stride
    taps: dict[tuple[int, int], torch.Tensor] = {}
    pairs = 0
    for ia, ea in enumerate(a.offsets[0]):
        for ib, eb in enumerate(b.offsets[0]):
            if (ea - eb) % sh:
                continue
            for ja, fa in enumerate(a.offsets[1]):
                for jb, fb in enumerate(b.offsets[1]):
                    if (fa - fb) % sw:
                        continue
                    key = ((ea - eb) // sh, (fa - fb) // sw)
                    term = a.kernel[:, :, ia, ja] @ b.kernel[:, :, ib, jb].T
                    taps[key] = taps[key] + term if key in taps else term
                    pairs += 1
    sums = [float(k.kernel.flatten(2).norm(dim=(0, 1)).sum()) for k in (a, b)]
    return taps, gamma(a.channels[1] + pairs + 2) * sums[0] * sums[1]


def _layer_of(taps: dict[tuple[int, int], torch.Tensor], like: GridLayer) -> GridLayer:
    """The stride-1 convolution with ``taps`` on ``like``'s grid and real positions."""
    rows, cols = sorted({d[0] for d in taps}), sorted({d[1] for d in taps})
    first = next(iter(taps.values()))
    kernel = torch.zeros(*first.shape, len(rows), len(cols), dtype=torch.float64)
    for (dh, dw), t in taps.items():
        kernel[:, :, rows.index(dh), cols.index(dw)] = t
    return GridLayer(kernel, like.grid, (1, 1), (tuple(rows), tuple(cols)), like.real_in, like.real_out)


def block_rho(block: Residual, rules: Sequence[Rule]) -> tuple[float, str] | None:
    """(certified rho >= Lip(block), the rule) of the best of ``rules`` per frequency; None when the block is not
    of :func:`applies`'s form on a common circular grid with slopes in [0, 1].

    rho^2 = max_v lambda_max(S S^T(v) + top H(v) M_n(v)^{-1} H(v)^H), H = S W^T Lambda' + G with Lambda' = lam /
    top (true scale), S S^T and S W^T stride-1 convolutions on the output grid (:func:`_product_taps`)."""
    if not applies(block):
        return None
    try:
        check_chain(block.branch)
        plan = plan_chain(block.branch)
    except (UnsupportedConvGeometryError, UnsupportedSlopesError):
        return None
    w, g = plan.layers
    first = block.branch.operators[0]
    assert first is not None
    short = block.shortcut if isinstance(block.shortcut, Conv2dOperator) else _identity(first)
    for axis in (0, 1):  # the shortcut must read its padding from non-real positions of the same grid
        strict, least = _axis_need(short, axis)
        if w.grid[axis] < least or (strict is not None and strict != w.grid[axis]):
            return None
    s = _grid_layer(short, w.grid)
    if s.out_grid != g.grid or s.real_out != g.real_out or s.channels[0] != g.channels[0]:
        return None
    ss_taps, ss_delta = _product_taps(s, s)
    ss_layer = _layer_of(ss_taps, g)
    ss = ss_layer.symbol()
    ss = (ss + ss.mH) / 2
    ss_err = ss_delta + ss_layer.symbol_bounds()[1]
    sw_taps, sw_delta = _product_taps(s, w)
    gam, err = _layer_gamma(w, None)
    top = _top(gam)
    if top <= 0.0:
        return None
    gam = gam / top
    err = err / top + UNIT_ROUNDOFF * gam.flatten(1).abs().square().sum(1).sqrt()
    gam.diagonal(dim1=-2, dim2=-1).add_(err[:, None])
    best: tuple[float, str] | None = None
    for rule in rules:
        try:
            label, lam, factor = _factor(gam, half_counts(w.out_grid), rule, 1)
        except InfeasibleCertificateError:
            continue
        scale = lam / top  # Lambda' at true scale: M = M_normalized / top
        taps = {d: t * scale[None, :] for d, t in sw_taps.items()}
        for a, e_a in enumerate(g.offsets[0]):
            for b, e_b in enumerate(g.offsets[1]):
                tap = g.kernel[:, :, a, b]
                taps[(e_a, e_b)] = taps[(e_a, e_b)] + tap if (e_a, e_b) in taps else tap
        h = _layer_of(taps, g)
        # H's taps: S W^T's (error sw_delta) scaled by Lambda', then G's added: 3 more roundings per entry
        delta = (sw_delta * float(scale.max())
                 + 3.03 * UNIT_ROUNDOFF * float(h.kernel.flatten(2).norm(dim=(0, 1)).sum()))
        blocks, h_err = _layer_gamma(h, factor)
        kappa = h.symbol_bounds()[0]
        h_err = h_err + (2 * kappa * delta + delta**2) / factor.mu
        total = ss + top * blocks
        values = torch.linalg.eigvalsh(total)
        eps = torch.finfo(torch.float64).eps
        peak = (values[..., -1] + _EIGVALSH_ERROR * total.shape[-1] * eps * values.abs().amax(-1)
                + ss_err + top * h_err + 2 * UNIT_ROUNDOFF * total.flatten(1).abs().square().sum(1).sqrt())
        rho = float(certified_root(max(float(peak.max()), 0.0) * (1 + 4 * UNIT_ROUNDOFF), 0.0))
        if best is None or rho < best[0]:
            best = (rho, label)
    return best
