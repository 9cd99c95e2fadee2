"""Certified spectral norms of 2-D convolutions without their dense matrices (docs/decisions.md 21).

Two sound estimators of ||A||_2 for a :class:`~lipcert.operators.Conv2dOperator` A; the result is
the smaller:

* ``frequency``: along each axis, a zero-padded convolution is a restriction of a circular one on a
  grid of N >= n + max(pad) positions (N a multiple of the stride s, N >= s n_out), so
  A = R S C E with an isometric embedding E, a circular convolution C, the subsampling S and a
  restriction R (||R||, ||S|| <= 1).  After the polyphase split of the input (an isometry), S C is
  block-diagonal in the M = N / s frequencies: one C_out x (s_h s_w C_in) block B(w) per
  frequency pair, B(w)[o, (c, r)] = sum_taps K[o, c, a, b] exp(2 pi i w.q / M) over the taps
  a, b whose offset d a - p splits as s q + r.  ||A|| <= max_w ||B(w)|| (Sedghi et al. 2019 for
  s = 1, exact for circular padding with n divisible by s).
* ``dense``: the exact Gram matrix A A^T or A^T A (the smaller), assembled from the tap pairs
  K_t K_t'^T without building A, and its certified lambda_max (:func:`~lipcert.bounds.eigen.lambda_max`).
  Used where the grid is small (the frequency bound is +10 % at 4 x 4) and the matrix fits.
* ``rows exact``: periodized along the columns only, exact along the rows: per column frequency w, the
  Gram matrix of the (C_out H_out) x (C_in H s_w) block B(w) = sum_t K_t (x) S_t (x) e_t(w), from the
  tap pairs; the certified lambda_max of its real form [[Re, -Im], [Im, Re]] (same spectrum, doubled).
  Where the exact Gram is too large but the grid still small (8 x 8 at 256 channels: +2 % -> below).

Groups: the operator is block-diagonal over groups, so its norm is the *max* over groups.
Rounding: every singular value or Gram eigenvalue is raised by its solver's backward error and by a
bound on the rounding of the blocks (gamma_m sum_t ||K_t||_F) or of the Gram matrix
(gamma_m (sum_t ||K_t||_F)^2) before the certified square root (:func:`lipcert.rounding.certified_root`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..operators import Conv2dOperator
from ..rounding import certified_root, gamma
from .eigen import lambda_max

DENSE_LIMIT = 8192
"""Largest Gram dimension (per group) for which the exact ``dense`` estimator runs by default."""
SMALL_GRID = 64
"""The ``dense`` estimator runs only where the output grid has at most this many positions."""
_EIGVALSH_ERROR = 8.0  # backward error of svd / eigvalsh: |fl(x) - x| <= 8 n eps max|x| (as in eigen.py)


@dataclass(frozen=True)
class ConvNorm:
    """A certified upper bound on the spectral norm of one convolution.

    ``value`` >= ||A||_2 (float64, rounded up); ``estimates`` maps every estimator that ran
    (``frequency``, ``dense``) to its certified value; ``method`` names the smallest.
    """

    value: float
    method: str
    estimates: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def conv_norm(op: Conv2dOperator, *, dense_limit: int = DENSE_LIMIT, small_grid: int = SMALL_GRID) -> ConvNorm:
    """Certified ||A||_2 of a convolution (or its adjoint: the same norm), minimum of the sound estimators.

    ``dense_limit`` caps the Gram dimension of the exact estimator, which runs only on output
    grids of at most ``small_grid`` positions; 0 disables it.
    """
    start = time.perf_counter()
    estimates: dict[str, float] = {}
    columns = None
    if _periodizable(op):
        columns = _frequency_bounds(op)
        estimates["frequency"] = float(columns.max())
    _, h_out, w_out = op.conv_out_shape
    dim = _dense_dim(op)
    one_by_one = op.kernel.shape[2:] == (1, 1) and not any(op.padding)  # the frequency bound is ||K|| (exact)
    small = h_out * w_out <= small_grid and not (one_by_one and estimates)
    if dim <= dense_limit and (small or not estimates):
        estimates["dense"] = _dense_bound(op)
    elif small and columns is not None and 2 * _semi_dim(op) <= dense_limit:
        estimates["rows exact"] = _semi_bound(op, columns)
    if not estimates:  # no periodization and too large for the exact Gram: the dense Gram anyway
        estimates["dense"] = _dense_bound(op)
    best = min(estimates, key=estimates.__getitem__)
    return ConvNorm(estimates[best], best, estimates, time.perf_counter() - start)


# ---------------------------------------------------------------------------------- axes
@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a convolution: n_in inputs, n_out outputs, tap a reads s i + d a - before."""

    n_in: int
    n_out: int
    taps: int
    stride: int
    dilation: int
    before: int
    after: int
    circular: bool

    def offsets(self) -> list[int]:
        return [self.dilation * a - self.before for a in range(self.taps)]

    def grid(self) -> int | None:
        """M = N / s of a valid circular grid N, or None (circular padding with s not dividing n)."""
        s = self.stride
        if self.circular:
            return self.n_in // s if self.n_in % s == 0 and self.n_out * s <= self.n_in else None
        return -(-max(self.n_in + max(self.before, self.after), s * self.n_out) // s)

    def position(self, a: int, i: int) -> int | None:
        """Input index read by tap a at output i (None: a padding zero)."""
        x = self.stride * i + self.dilation * a - self.before
        if self.circular:
            return x % self.n_in
        return x if 0 <= x < self.n_in else None


def _axes(op: Conv2dOperator) -> tuple[_Axis, _Axis]:
    _, h, w = op.in_shape
    _, h_out, w_out = op.conv_out_shape
    kh, kw = int(op.kernel.shape[2]), int(op.kernel.shape[3])
    t, b, left, r = op.padding
    return (_Axis(h, h_out, kh, op.stride[0], op.dilation[0], t, b, op.circular),
            _Axis(w, w_out, kw, op.stride[1], op.dilation[1], left, r, op.circular))


def _periodizable(op: Conv2dOperator) -> bool:
    return all(ax.grid() is not None for ax in _axes(op))


def _grouped(op: Conv2dOperator) -> torch.Tensor:
    """The kernel as (groups, C_out / groups, C_in / groups, kh, kw)."""
    k = op.kernel
    return k.reshape(op.groups, k.shape[0] // op.groups, *k.shape[1:])


def _gram_error(kernel: torch.Tensor, terms: int) -> float:
    """Bound on ||fl(G) - G||_2 for G = B B^H assembled from the taps: gamma_m (sum_t ||K_t||_F)^2, doubled."""
    tap_norms = kernel.flatten(-2).norm(dim=-3).norm(dim=-2).sum(-1)  # (groups,) sum_t ||K_t||_F
    return 2 * gamma(terms) * float(tap_norms.max()) ** 2


# ---------------------------------------------------------------------------------- frequency
def _phases(ax: _Axis, m: int, half: bool) -> torch.Tensor:
    """E[w, r, a] = [offset_a mod s = r] exp(2 pi i w q_a / M) for w in 0..M-1 (0..M//2 if ``half``)."""
    s = ax.stride
    freqs = torch.arange(m // 2 + 1 if half else m, dtype=torch.float64)
    out = torch.zeros(len(freqs), s, ax.taps, dtype=torch.complex128)
    for a, e in enumerate(ax.offsets()):
        q, r = divmod(e, s)
        out[:, r, a] = torch.polar(torch.ones_like(freqs), 2 * math.pi * freqs * q / m)
    return out


def frequency_blocks(op: Conv2dOperator) -> torch.Tensor:
    """B(w) for half of the frequency pairs: (groups, F, C_out/g, C_in/g * s_h * s_w), complex.

    The other half are complex conjugates (a real kernel), with the same norms.
    """
    ax_h, ax_w = _axes(op)
    m_h, m_w = ax_h.grid(), ax_w.grid()
    if m_h is None or m_w is None:
        raise ValueError(f"{op.describe()}: circular padding with a stride that does not divide the input")
    e_h, e_w = _phases(ax_h, m_h, False), _phases(ax_w, m_w, True)
    k = _grouped(op).to(torch.complex128)
    blocks = torch.einsum("gocab,hra,wtb->ghwocrt", k, e_h, e_w)
    g, fh, fw, co = blocks.shape[:4]
    return blocks.reshape(g, fh * fw, co, -1)


def _frequency_bounds(op: Conv2dOperator) -> torch.Tensor:
    """Certified max over row frequencies of ||B(w)|| per group and column frequency: (groups, F_w).

    Batched singular values (faster than complex eigvalsh), raised by their error; the maximum is
    the ``frequency`` bound.
    """
    blocks = frequency_blocks(op)
    rows, cols = blocks.shape[-2:]
    m_w = _axes(op)[1].grid() or 1
    top = torch.linalg.svdvals(blocks)[..., 0].reshape(op.groups, -1, m_w // 2 + 1).amax(1)
    taps = op.kernel.shape[2] * op.kernel.shape[3]
    # svd is backward stable (|fl(sigma) - sigma| <= 8 n eps ||B||); each entry of B is a sum of
    # <= taps products with phases computed to a few ulps: ||fl(B) - B|| <= gamma_m sum_t ||K_t||_F
    k = _grouped(op)
    tap_sum = float(k.flatten(-2).norm(dim=-3).norm(dim=-2).sum(-1).max())
    sigma = top * (1 + _EIGVALSH_ERROR * min(rows, cols) * torch.finfo(torch.float64).eps)
    sigma = sigma + 2 * gamma(4 * taps + 16) * tap_sum
    return torch.as_tensor(certified_root((sigma * sigma).numpy(), 0.0))


# ---------------------------------------------------------------------------------- dense
def _dense_dim(op: Conv2dOperator) -> int:
    c_out, h_out, w_out = op.conv_out_shape
    c_in, h, w = op.in_shape
    return min(c_out * h_out * w_out, c_in * h * w) // op.groups


def _coincidences(ax: _Axis, out_side: bool) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """For each tap pair (a, a'), the index pairs (u, u') with S_a S_a'^T (out side) or S_a^T S_a' nonzero.

    S_a[i, x] = 1 when tap a at output i reads input x; repeated pairs count with multiplicity.
    """
    pairs: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    reads = [[ax.position(a, i) for i in range(ax.n_out)] for a in range(ax.taps)]
    for a in range(ax.taps):
        for a2 in range(ax.taps):
            us, vs = pairs.setdefault((a, a2), ([], []))
            for i in range(ax.n_out):
                x = reads[a][i]
                if x is None:
                    continue
                if out_side:  # outputs i, i2 reading the same input x
                    for i2 in range(ax.n_out):
                        if reads[a2][i2] == x:
                            us.append(i)
                            vs.append(i2)
                else:  # inputs x, x2 read by the same output i
                    x2 = reads[a2][i]
                    if x2 is not None:
                        us.append(x)
                        vs.append(x2)
    return pairs


def dense_gram(op: Conv2dOperator, group: int = 0) -> torch.Tensor:
    """The exact Gram matrix of one group's convolution, A A^T or A^T A (the smaller), float64.

    Rows and columns are ordered (row, column, channel); the spectrum is that of A A^T (A^T A).
    """
    ax_h, ax_w = _axes(op)
    c_out, h_out, w_out = op.conv_out_shape
    c_in, h, w = op.in_shape
    out_side = c_out * h_out * w_out <= c_in * h * w
    k = _grouped(op)[group]  # (co, ci, kh, kw)
    taps = k.permute(2, 3, 0, 1)  # (kh, kw, co, ci)
    m_h, m_w = (h_out, w_out) if out_side else (h, w)
    c = k.shape[0] if out_side else k.shape[1]
    gram = torch.zeros(m_h, m_w, m_h, m_w, c, c, dtype=torch.float64)
    co_h, co_w = _coincidences(ax_h, out_side), _coincidences(ax_w, out_side)
    for (a, a2), (uh, vh) in co_h.items():
        if not uh:
            continue
        for (b, b2), (uw, vw) in co_w.items():
            if not uw:
                continue
            block = taps[a, b] @ taps[a2, b2].T if out_side else taps[a, b].T @ taps[a2, b2]
            ih, iw = torch.meshgrid(torch.tensor(uh), torch.tensor(uw), indexing="ij")
            jh, jw = torch.meshgrid(torch.tensor(vh), torch.tensor(vw), indexing="ij")
            idx = (ih.reshape(-1), iw.reshape(-1), jh.reshape(-1), jw.reshape(-1))
            gram.index_put_(idx, block.expand(len(idx[0]), c, c), accumulate=True)
    n = m_h * m_w * c
    gram = gram.permute(0, 1, 4, 2, 3, 5).reshape(n, n)
    return (gram + gram.T) / 2


def _dense_bound(op: Conv2dOperator) -> float:
    taps = op.kernel.shape[2] * op.kernel.shape[3]
    co, ci = op.kernel.shape[:2]
    error = _gram_error(_grouped(op), max(co, ci) + taps * taps + 4)
    tops = []
    for g in range(op.groups):
        gram = dense_gram(op, g)
        # lambda_max is certified (Cholesky-confirmed or dense eigvalsh plus its backward error)
        tops.append(float(lambda_max(gram)))
    return float(certified_root(max(tops) + error, 0.0))


# ---------------------------------------------------------------------------------- rows exact
def _semi_dim(op: Conv2dOperator) -> int:
    c_out, h_out, _ = op.conv_out_shape
    return c_out // op.groups * h_out


def semi_grams(op: Conv2dOperator, group: int = 0) -> torch.Tensor:
    """B(w) B(w)^H for half of the column frequencies w: (F, C_out/g H_out, C_out/g H_out), complex.

    B(w) is exact along the rows and periodized along the columns (module docstring); rows and
    columns of the Gram matrix are ordered (row, channel).
    """
    ax_h, ax_w = _axes(op)
    m_w = ax_w.grid()
    if m_w is None:
        raise ValueError(f"{op.describe()}: circular padding with a stride that does not divide the input")
    _, h_out, _ = op.conv_out_shape
    k = _grouped(op)[group]
    taps = k.permute(2, 3, 0, 1)  # (kh, kw, co, ci)
    c = k.shape[0]
    freqs = torch.arange(m_w // 2 + 1, dtype=torch.float64)
    split = [divmod(e, ax_w.stride) for e in ax_w.offsets()]  # (q_b, r_b)
    gram = torch.zeros(len(freqs), h_out, h_out, c, c, dtype=torch.complex128)
    for (a, a2), (uh, vh) in _coincidences(ax_h, True).items():
        if not uh:
            continue
        rows, cols = torch.tensor(uh), torch.tensor(vh)
        for b, (q, r) in enumerate(split):
            for b2, (q2, r2) in enumerate(split):
                if r != r2:
                    continue
                phase = torch.polar(torch.ones_like(freqs), 2 * math.pi * freqs * (q - q2) / m_w)
                block = (taps[a, b] @ taps[a2, b2].T).to(torch.complex128)
                term = phase[:, None, None] * block  # (F, c, c)
                gram[:, rows, cols] += term[:, None]  # the (row, row') pairs of one tap pair are distinct
    n = h_out * c
    gram = gram.permute(0, 1, 3, 2, 4).reshape(len(freqs), n, n)
    return (gram + gram.mH) / 2


def _semi_bound(op: Conv2dOperator, columns: torch.Tensor) -> float:
    """max over groups and column frequencies of ||B(w)||, each at most its ``columns`` bound.

    Visited from the largest ``columns`` bound down; once a bound is below the running maximum,
    the rest cannot raise it and are skipped (a certified value either way).
    """
    taps = op.kernel.shape[2] * op.kernel.shape[3]
    error = _gram_error(_grouped(op), op.kernel.shape[1] + 4 * taps * taps + 16)
    best, grams = 0.0, {}
    for flat in torch.argsort(columns.reshape(-1), descending=True).tolist():
        g, w = divmod(flat, columns.shape[1])
        cap = float(columns[g, w])
        if cap <= best:
            break
        if g not in grams:
            grams[g] = semi_grams(op, g)
        gram = grams[g][w]
        real = torch.cat([torch.cat([gram.real, -gram.imag], 1), torch.cat([gram.imag, gram.real], 1)], 0)
        best = max(best, min(cap, float(certified_root(float(lambda_max((real + real.T) / 2)) + error, 0.0))))
    return best
