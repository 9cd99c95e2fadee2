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
Speed (docs/decisions.md 34): the frequency blocks' norms come from one batched ``eigvalsh`` of their
Gram matrices (the smaller side; unread polyphase components dropped); the exact and rows-exact Gram
matrices get their top Ritz value from Lanczos (on the convolution itself for the exact one) and
one Cholesky factorization of theta I - G confirms it (real or complex Hermitian).
Rounding: every Gram eigenvalue is raised by its solver's backward error and by a
bound on the rounding of the blocks (gamma_m sum_t ||K_t||_F) or of the Gram matrix
(gamma_m (sum_t ||K_t||_F)^2) before the certified square root (:func:`lipcert.rounding.certified_root`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..operators import Conv2dOperator
from ..rounding import certified_root, gamma
from .eigen import DENSE_BELOW, lambda_max, lanczos

DENSE_LIMIT = 8192
"""Largest Gram dimension (per group) for which the exact ``dense`` estimator runs by default."""
SMALL_GRID = 64
"""The ``dense`` estimator runs only where the output grid has at most this many positions."""
_RELATIVE_SLACK = (1e-7, 1e-4, 1e-2)
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


def conv_norm_bytes(op: Conv2dOperator, *, dense_limit: int = DENSE_LIMIT, small_grid: int = SMALL_GRID) -> int:
    """Estimated peak working memory of :func:`conv_norm` on ``op`` in bytes (the largest estimator's).

    Frequency: the complex blocks, their Gram matrices and eigvalsh's workspace (3 copies); exact
    Gram: the matrix, its permuted copy and the Cholesky factor (4 n^2 doubles); rows exact: the
    per-frequency Gram matrices and one factorization.
    """
    _, h_out, w_out = op.conv_out_shape
    peak = 0
    if _periodizable(op):
        (ax_h, ax_w), g = _axes(op), op.groups
        freqs = (ax_h.grid() or 1) * ((ax_w.grid() or 1) // 2 + 1)
        rows, cols = op.kernel.shape[0] // g, op.kernel.shape[1] * ax_h.stride * ax_w.stride
        peak = 16 * g * freqs * (rows * cols + 3 * min(rows, cols) ** 2)
        if h_out * w_out <= small_grid and 2 * _semi_dim(op) <= dense_limit and _dense_dim(op) > dense_limit:
            peak = max(peak, 16 * ((ax_w.grid() or 1) // 2 + 3) * _semi_dim(op) ** 2)
    dim = _dense_dim(op)
    if dim <= dense_limit and (h_out * w_out <= small_grid or not peak) or not peak:
        peak = max(peak, 4 * 8 * dim**2)
    return peak


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
    """B(w) for half of the frequency pairs: (groups, F, C_out/g, C_in/g * phases), complex.

    The other half are complex conjugates (a real kernel), with the same norms.  Polyphase
    components that no tap reads (a 1x1 kernel at stride 2 reads one of four) are left out: their
    columns of B(w) are zero.
    """
    ax_h, ax_w = _axes(op)
    m_h, m_w = ax_h.grid(), ax_w.grid()
    if m_h is None or m_w is None:
        raise ValueError(f"{op.describe()}: circular padding with a stride that does not divide the input")
    e_h, e_w = _read_phases(_phases(ax_h, m_h, False)), _read_phases(_phases(ax_w, m_w, True))
    k = _grouped(op).to(torch.complex128)
    blocks = torch.einsum("gocab,hra,wtb->ghwocrt", k, e_h, e_w)
    g, fh, fw, co = blocks.shape[:4]
    return blocks.reshape(g, fh * fw, co, -1)


def _read_phases(e: torch.Tensor) -> torch.Tensor:
    """E[w, r, a] restricted to the polyphase components r that some tap reads."""
    return e[:, (e != 0).any(dim=(0, 2))]


def _top_gram_eigenvalues(blocks: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of B B^H (or B^H B, the smaller) per block, batched (float64).

    The batched eigvalsh runs on one intra-op thread: with two threads on a loaded machine it took
    10-30x longer than with one (measured: 561 blocks of 64 x 64, 0.8 s vs 23 s).
    """
    rows, cols = blocks.shape[-2:]
    gram = blocks @ blocks.mH if rows <= cols else blocks.mH @ blocks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigvalsh(gram)[..., -1]
    finally:
        torch.set_num_threads(threads)


def _frequency_bounds(op: Conv2dOperator) -> torch.Tensor:
    """Certified max over row frequencies of ||B(w)|| per group and column frequency: (groups, F_w).

    Batched: the Gram matrix of every block (the smaller side) and its eigvalsh, 3-10x faster
    than singular values of the blocks; the maximum is the ``frequency`` bound.
    """
    blocks = frequency_blocks(op)
    rows, cols = blocks.shape[-2:]
    m_w = _axes(op)[1].grid() or 1
    top = _top_gram_eigenvalues(blocks).reshape(op.groups, -1, m_w // 2 + 1).amax(1)
    taps = op.kernel.shape[2] * op.kernel.shape[3]
    # Each entry of fl(B) is a sum of <= taps products with phases computed to a few ulps:
    # ||fl(B) - B|| <= e_B = gamma_{4 taps + 16} T, T = sum_t ||K_t||_F (so also || |fl(B)| || <= 2 T).
    # fl(G) = fl(B) fl(B)^H has |fl(G) - G'| <= gamma_n |fl B| |fl B|^H (n = min side, Higham 3.5), so
    # ||fl(B)||^2 <= lambda_max(fl G) + gamma_n 4 T^2; eigvalsh adds 8 n eps |lambda| (backward stable).
    k = _grouped(op)
    tap_sum = float(k.flatten(-2).norm(dim=-3).norm(dim=-2).sum(-1).max())
    square = top.clamp(min=0) * (1 + _EIGVALSH_ERROR * max(rows, cols) * torch.finfo(torch.float64).eps)
    square = square + 4 * gamma(max(rows, cols) + 4) * tap_sum**2
    sigma = torch.sqrt(square) * (1 + 4 * torch.finfo(torch.float64).eps) + 2 * gamma(4 * taps + 16) * tap_sum
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
    # every tap-pair product K_t K_t'^T (or K_t^T K_t') in one GEMM: (kh, kw, kh, kw, c, c)
    side = taps if out_side else taps.transpose(-1, -2)
    flat = side.reshape(-1, side.shape[-1])
    products = (flat @ flat.T).reshape(*side.shape[:3], *side.shape[:3]).permute(0, 1, 3, 4, 2, 5)
    gram = torch.zeros(m_h * m_w * m_h * m_w, c, c, dtype=torch.float64)
    co_h, co_w = _coincidences(ax_h, out_side), _coincidences(ax_w, out_side)
    for (a, a2), (uh, vh) in co_h.items():
        if not uh:
            continue
        for (b, b2), (uw, vw) in co_w.items():
            if not uw:
                continue
            ih, iw = torch.meshgrid(torch.tensor(uh), torch.tensor(uw), indexing="ij")
            jh, jw = torch.meshgrid(torch.tensor(vh), torch.tensor(vw), indexing="ij")
            lin = (((ih * m_w + iw) * m_h + jh) * m_w + jw).reshape(-1)
            gram.index_add_(0, lin, products[a, b, a2, b2].expand(len(lin), c, c))
    gram = gram.reshape(m_h, m_w, m_h, m_w, c, c)
    n = m_h * m_w * c
    gram = gram.permute(0, 1, 4, 2, 3, 5).reshape(n, n)
    upper = gram.T.contiguous()
    return gram.add_(upper).mul_(0.5)


def _dense_bound(op: Conv2dOperator) -> float:
    taps = op.kernel.shape[2] * op.kernel.shape[3]
    co, ci = op.kernel.shape[:2]
    error = _gram_error(_grouped(op), max(co, ci) + taps * taps + 4)
    tops = []
    for g in range(op.groups):
        sub = _group_operator(op, g)
        n = min(sub.shape)
        if n < DENSE_BELOW:  # certified: dense eigvalsh plus its backward error
            tops.append(float(lambda_max(dense_gram(op, g))))
            continue
        # the top Ritz value from the convolution itself (no pass over the n x n matrix), confirmed by
        # one Cholesky of theta I - G (theta > lambda_max(G) when it succeeds)
        if sub.shape[0] <= sub.shape[1]:
            matvec = lambda v: sub.matmat(sub.rmatmat(v[None]))[0]  # noqa: E731
        else:
            matvec = lambda v: sub.rmatmat(sub.matmat(v[None]))[0]  # noqa: E731
        theta, _ = lanczos(matvec, n, dtype=torch.float64, device=torch.device("cpu"), tol=1e-10)
        tops.append(confirmed_top(dense_gram(op, g), theta))
    return float(certified_root(max(tops) + error, 0.0))


def _group_operator(op: Conv2dOperator, group: int) -> Conv2dOperator:
    """The convolution of one group alone (groups = 1), as an operator (no adjoint: same norm)."""
    c_in, h, w = op.in_shape
    return replace(op, kernel=_grouped(op)[group], in_shape=(c_in // op.groups, h, w), groups=1, adjoint=False)


def confirmed_top(gram: torch.Tensor, estimate: float) -> float:
    """A certified upper bound on lambda_max of the symmetric ``gram`` from an estimate of it.

    estimate + slack is confirmed by a Cholesky factorization of (estimate + slack) I - gram (real
    symmetric or complex Hermitian), with slack 1e-7, then 1e-4, 1e-2 of the matrix's scale; else
    :func:`~lipcert.bounds.eigen.lambda_max`'s own search (real matrices) or eigvalsh plus its error.
    """
    spread = max(abs(estimate), float(gram.diagonal().real.abs().max()), torch.finfo(torch.float64).tiny)
    for slack in _RELATIVE_SLACK:
        candidate = estimate + slack * spread
        shifted = -gram
        shifted.diagonal().add_(candidate)
        if int(torch.linalg.cholesky_ex(shifted).info) == 0:
            return candidate
        del shifted
    if not gram.is_complex():
        return float(lambda_max(gram))
    values = torch.linalg.eigvalsh(gram)
    return float(values[-1]) + _EIGVALSH_ERROR * gram.shape[0] * torch.finfo(torch.float64).eps * float(values.abs().max())


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
        top = confirmed_top(gram, _hermitian_ritz(gram)) if gram.shape[0] >= DENSE_BELOW else float(
            torch.linalg.eigvalsh(gram)[-1] * (1 + _EIGVALSH_ERROR * gram.shape[0] * torch.finfo(torch.float64).eps))
        best = max(best, min(cap, float(certified_root(top + error, 0.0))))
    return best


def _hermitian_ritz(gram: torch.Tensor) -> float:
    """Top Ritz value of a Hermitian matrix by real Lanczos on its real form [[Re, -Im], [Im, Re]]
    (the same spectrum, each eigenvalue twice), applied as one complex product per step."""
    n = gram.shape[0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        z = gram @ torch.complex(v[:n], v[n:])
        return torch.cat([z.real, z.imag])

    return lanczos(matvec, 2 * n, dtype=torch.float64, device=gram.device, tol=1e-10)[0]
