"""The circular grids on which a chain of convolutions runs frequency by frequency (docs/decisions.md 27, 32).

Each convolution of the chain's head becomes a circular convolution on a grid of N_h x N_w positions
(stride s: from the grid N to the grid N / s), with the layer's real activations at the top-left
positions.  Circular padding needs the grid to be the input itself; zero padding needs every
read of a padding position to land on a non-real grid position (N >= n + max(before, after)) and
the outputs to fit (N >= s n_out); one grid N_0 per axis serves the whole chain with
N_k = N_0 / (s_1 ... s_k).  Groups are expanded to a block-diagonal C_out x C_in kernel; a stride-1
ConvTranspose2d is the adjoint circular convolution (kernel transposed, offsets negated).

A stride-s circular conv S C maps the DFT coefficients of grid N to those of N / s by aliasing:
(S x)^(v) = s^{-1/2} sum_{m < s} x^(v + m N / s) (unitary DFTs), so
Gamma(v) = s^{-1} sum_m K(w_m) M(w_m)^{-1} K(w_m)^H over the s_h s_w frequencies w_m of the input
grid that alias to v.  Only the ``rfft2`` half of each spectrum is stored; :func:`alias_index`
maps every alias to a stored frequency and says where to take the complex conjugate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UnsupportedConvGeometryError
from ..network import Network
from ..operators import Conv2dOperator
from ..rounding import gamma

PHASE_ROUNDINGS = 64
"""Roundings charged to one product kernel x phase x phase: each phase exp(2 pi i r / N) with the integer
r = w e mod N reduced exactly has |theta| < 2 pi, so |fl(e^{i theta}) - e^{i theta}| <= 23 u (three roundings
of theta, one ulp each for sin and cos); two complex products add <= 2 sqrt(2) gamma_2 (Higham 3.6)."""


@dataclass(frozen=True)
class GridLayer:
    """One convolution as a circular convolution on its input grid.

    ``kernel`` (C_out, C_in, kh, kw) float64 with groups expanded; ``offsets`` per axis the read offset
    e of each tap (output j reads input s j + e, mod N); ``real_in``/``real_out`` the real positions
    (the top-left block of the grid).
    """

    kernel: torch.Tensor
    grid: tuple[int, int]
    stride: tuple[int, int]
    offsets: tuple[tuple[int, ...], tuple[int, ...]]
    real_in: tuple[int, int]
    real_out: tuple[int, int]

    @property
    def out_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.stride[0], self.grid[1] // self.stride[1]

    @property
    def channels(self) -> tuple[int, int]:
        """(C_out, C_in)."""
        return int(self.kernel.shape[0]), int(self.kernel.shape[1])

    def symbol(self) -> torch.Tensor:
        """K(w) = sum_taps K[:, :, a, b] exp(2 pi i (w_h e_a / N_h + w_w e_b / N_w)) on the ``rfft2`` frequencies
        of the input grid: (N_h (N_w // 2 + 1), C_out, C_in) complex128."""
        ph = _phases(self.grid[0], self.grid[0], self.offsets[0], 1)
        pw = _phases(self.grid[1], self.grid[1] // 2 + 1, self.offsets[1], 1)
        blocks = torch.einsum("ocab,ha,wb->hwoc", self.kernel.to(torch.complex128), ph, pw)
        return blocks.reshape(-1, *blocks.shape[2:])

    def symbol_bounds(self) -> tuple[float, float]:
        """(kappa, epsilon): ||K(w)||_2 <= kappa = sum_t ||K_t||_F and ||fl(K(w)) - K(w)||_2 <= epsilon.

        epsilon = 2 gamma_{T + 64} sum_t ||K_t||_F for T taps: the entries are T-term sums of products with
        phases (:data:`PHASE_ROUNDINGS`), |error| <= gamma |K_t| entrywise, and ||sum_t |K_t| ||_F <= kappa.
        """
        taps = self.kernel.shape[2] * self.kernel.shape[3]
        kappa = float(self.kernel.flatten(2).norm(dim=(0, 1)).sum())
        return kappa, 2 * gamma(taps + PHASE_ROUNDINGS) * kappa


@dataclass(frozen=True)
class ChainPlan:
    """The conv head of a network on its grids; ``exact`` when every layer is circular (no restriction)."""

    layers: tuple[GridLayer, ...]
    exact: bool

    @property
    def channels(self) -> tuple[int, ...]:
        return (self.layers[0].channels[1], *(layer.channels[0] for layer in self.layers))


def _phases(n: int, count: int, offsets: tuple[int, ...], sign: int) -> torch.Tensor:
    """exp(sign 2 pi i (w e mod n) / n) for w < count and each offset e: (count, len(offsets)) complex128."""
    w = torch.arange(count, dtype=torch.int64)[:, None]
    e = torch.tensor(offsets, dtype=torch.int64)[None, :]
    angle = (2 * math.pi / n) * torch.remainder(w * e, n).to(torch.float64)
    return torch.polar(torch.ones_like(angle), sign * angle)


def half_counts(grid: tuple[int, int]) -> torch.Tensor:
    """Multiplicity (1 or 2) of each ``rfft2`` frequency of ``grid`` in the full spectrum: (N_h (N_w // 2 + 1),)."""
    n_h, n_w = grid
    counts = torch.full((n_h, n_w // 2 + 1), 2.0, dtype=torch.float64)
    counts[:, 0] = 1.0
    if n_w % 2 == 0:
        counts[:, -1] = 1.0
    return counts.flatten()


def alias_index(grid: tuple[int, int], stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each stored frequency v of the grid N / s and each of its s_h s_w aliases w_m on the grid N: the
    stored index of w_m (or of -w_m) and whether to conjugate: two (F_out, s_h s_w) tensors."""
    (n_h, n_w), (s_h, s_w) = grid, stride
    o_h, o_w = n_h // s_h, n_w // s_w
    v_h = torch.arange(o_h)[:, None, None, None]
    v_w = torch.arange(o_w // 2 + 1)[None, :, None, None]
    w_h = (v_h + o_h * torch.arange(s_h)[None, None, :, None]).expand(o_h, o_w // 2 + 1, s_h, s_w)
    w_w = (v_w + o_w * torch.arange(s_w)[None, None, None, :]).expand(o_h, o_w // 2 + 1, s_h, s_w)
    conj = w_w > n_w // 2
    h = torch.where(conj, torch.remainder(-w_h, n_h), w_h)
    w = torch.where(conj, n_w - w_w, w_w)
    index = h * (n_w // 2 + 1) + w
    return index.reshape(-1, s_h * s_w), conj.reshape(-1, s_h * s_w)


def tail_dft(v: torch.Tensor, real: tuple[int, int], grid: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """The rows of V (n x C n_h n_w, real positions) zero-extended onto ``grid``, in the DFT basis of the
    recursion (the ``rfft2`` convention, norm "ortho"): (F, C, n) complex, and a bound on the 2-norm of its
    rounding error, sqrt(2 P) 2 gamma_{N_h + N_w + 64} ||V||_F (P = N_h N_w positions).

    Computed as two products with phase matrices (integer-reduced angles) rather than an FFT, so the
    error bound is Higham's dot-product bound: per entry <= gamma sum_p |V_p| / sqrt(P) <= gamma ||V_c||_2.
    """
    (n_h, n_w), (r_h, r_w) = grid, real
    c = v.shape[1] // (r_h * r_w)
    x = v.reshape(v.shape[0], c, r_h, r_w).to(torch.complex128)
    f_h = _phases(n_h, n_h, tuple(range(r_h)), -1) / math.sqrt(n_h)          # (N_h, r_h)
    f_w = _phases(n_w, n_w // 2 + 1, tuple(range(r_w)), -1) / math.sqrt(n_w)  # (N_w // 2 + 1, r_w)
    out = torch.einsum("ncab,ha,wb->hwcn", x, f_h, f_w).reshape(-1, c, v.shape[0])
    error = math.sqrt(2 * n_h * n_w) * 2 * gamma(n_h + n_w + PHASE_ROUNDINGS) * float(v.norm())
    return out, error


# ---------------------------------------------------------------------------------- planning
def _axis_need(op: Conv2dOperator, axis: int) -> tuple[int | None, int]:
    """(exact grid required or None, least grid) of the layer's input along one axis."""
    n_in, n_out = op.in_shape[1 + axis], op.conv_out_shape[1 + axis]
    s = op.stride[axis]
    before, after = op.padding[2 * axis], op.padding[2 * axis + 1]
    if op.circular:
        return n_in, max(n_in, s * n_out)
    return None, max(n_in + max(before, after), s * n_out)


def _grid_layer(op: Conv2dOperator, grid: tuple[int, int]) -> GridLayer:
    kernel = op.kernel
    if op.groups > 1:  # block-diagonal C_out x C_in kernel
        g, co, ci = op.groups, kernel.shape[0] // op.groups, kernel.shape[1]
        full = torch.zeros(kernel.shape[0], ci * g, *kernel.shape[2:], dtype=torch.float64)
        for i in range(g):
            full[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = kernel[i * co:(i + 1) * co]
        kernel = full
    kh, kw = kernel.shape[2:]
    offsets = (tuple(op.dilation[0] * a - op.padding[0] for a in range(kh)),
               tuple(op.dilation[1] * b - op.padding[2] for b in range(kw)))
    conv_in, conv_out = (op.in_shape[1], op.in_shape[2]), (op.conv_out_shape[1], op.conv_out_shape[2])
    if op.adjoint:  # the adjoint circular conv: kernel transposed, offsets negated, same grid (stride 1)
        return GridLayer(kernel.transpose(0, 1).contiguous(), grid, (1, 1),
                         (tuple(-e for e in offsets[0]), tuple(-e for e in offsets[1])), conv_out, conv_in)
    return GridLayer(kernel, grid, op.stride, offsets, conv_in, conv_out)


def plan_chain(net: Network) -> ChainPlan:
    """The leading convolutions of ``net`` on one family of circular grids, then a dense tail.

    Raises :class:`UnsupportedConvGeometryError` naming the layer when there is no such grid: circular
    padding on an input the stride does not divide, circular and zero padding that need different
    grids, a strided ConvTranspose2d, or an operator after a dense layer.  A chain of convolutions only
    (no dense tail: a residual branch) has every layer in the plan, the last one included.
    """
    ops = list(net.operators) if net.operators else [None] * net.depth
    convs: list[Conv2dOperator] = []
    for k, op in enumerate(ops):
        if op is None:
            break
        if not isinstance(op, Conv2dOperator):
            raise UnsupportedConvGeometryError(f"layer {k + 1}: {type(op).__name__} is not a Conv2dOperator")
        if op.adjoint and op.stride != (1, 1):
            raise UnsupportedConvGeometryError(f"layer {k + 1} ({op.describe()}): a strided ConvTranspose2d "
                                               "upsamples; the per-frequency pass has no block form for it")
        convs.append(op)
    if not convs:
        raise UnsupportedConvGeometryError("the network does not start with a convolution operator (a dense first "
                                           "layer, e.g. a folded input normalization, breaks the frequency blocks)")
    if any(op is not None for op in ops[len(convs):]):
        raise UnsupportedConvGeometryError(f"layers after the first {len(convs)} must be dense (a flatten, then "
                                           "linear layers, the last one included), or every layer a convolution")
    grid0 = []
    for axis in (0, 1):
        total, least = 1, 1
        exact: set[int] = set()
        for op in convs:  # total = s_1 ... s_{k-1} before layer k
            strict, need = _axis_need(op, axis)
            least = max(least, total * need)
            if strict is not None:
                exact.add(total * strict)
            total *= 1 if op.adjoint else op.stride[axis]
        if len(exact) > 1 or (exact and (min(exact) < least or min(exact) % total)):
            name = "rows" if axis == 0 else "columns"
            raise UnsupportedConvGeometryError(
                f"no common circular grid for the {name} of the conv layers ({', '.join(op.describe() for op in convs)}):"
                " circular padding fixes the grid to its input, which the strides must divide, and zero padding "
                "needs room for its padding; bound this network with the dense path or naive")
        grid0.append(exact.pop() if exact else -(-least // total) * total)
    layers, grid = [], (grid0[0], grid0[1])
    for op in convs:
        layer = _grid_layer(op, grid)
        layers.append(layer)
        grid = layer.out_grid
    return ChainPlan(tuple(layers), all(op.circular and layer.real_in == layer.grid and layer.real_out == layer.out_grid
                                        for op, layer in zip(convs, layers)))


def plan_bytes(plan: ChainPlan, tail_rows: int) -> int:
    """Peak bytes of one per-frequency pass: per layer the symbol, solves, Gram blocks, their aliases and
    factors (complex128, a few C x C arrays per stored input frequency), and the tail's DFT and factor."""
    peak = 0
    for layer in plan.layers:
        f = layer.grid[0] * (layer.grid[1] // 2 + 1)
        co, ci = layer.channels
        peak = max(peak, 16 * f * (3 * ci * ci + 3 * co * ci + 6 * co * co))
    last = plan.layers[-1]
    f = last.out_grid[0] * (last.out_grid[1] // 2 + 1)
    c = last.channels[0]
    peak = max(peak, 16 * f * c * (3 * tail_rows + 2 * c) + 8 * tail_rows * tail_rows * 4)
    return peak
