"""L2-norm pooling: a non-elementwise stage of a network graph with an exact Lipschitz constant (decisions 43).

A :class:`NormPool` maps a flat vector x (n_in,) to y (n_out,) with y_w = sqrt(sum_j P_wj x_{i(w, j)}^2):
window w reads the entries i(w, 1..K) of x with nonnegative weights P_wj.  torch's ``LPPool2d`` with p = 2
(sqrt of the window's sum of squares) and deel-torchlip's ``ScaledL2NormPool2d`` (the same, times a
constant that stays an affine layer after the stage) are such maps with P_wj = 1 on full windows.

Its L2 Lipschitz constant is exactly sqrt(max_i c_i), c_i = sum_{w, j: i(w, j) = i} P_wj the weight with
which entry i is covered (1 for non-overlapping windows; the number of windows holding the pixel for
overlapping ones): |y_w(x) - y_w(x')| <= ||D_w (x - x')|| (reverse triangle inequality, D_w = the window's
sqrt(P) selection), summed over windows, and x = t e_i, x' = 0 attains it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ShapeMismatchError
from .network import array_hash
from .rounding import certified_root, gamma


@dataclass(frozen=True, eq=False)
class NormPool:
    """y_w = sqrt(sum_j weight[w, j] x[index[w, j]]^2) on flat vectors.

    Attributes
    ----------
    index : Tensor
        (n_out, K) int64 indices into the flat input (an unused slot holds any index with weight 0).
    weight : Tensor
        (n_out, K) float64 weights P_wj >= 0.
    input_dim : int
        n_in, the size of the flat input.
    label : str
        What the stage came from (``"LPPool2d(p=2, kernel 2, stride 2)"``), for messages and ``repr``.
    """

    index: torch.Tensor
    weight: torch.Tensor
    input_dim: int
    label: str = "l2-norm pooling"

    def __post_init__(self) -> None:
        if self.index.ndim != 2 or tuple(self.weight.shape) != tuple(self.index.shape):
            raise ShapeMismatchError(f"{self.label}: index {tuple(self.index.shape)} and weight "
                                     f"{tuple(self.weight.shape)} must be (n_out, K) arrays of one shape")
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= self.input_dim):
            raise ShapeMismatchError(f"{self.label}: window indices must lie in [0, {self.input_dim})")
        if not bool(torch.isfinite(self.weight).all()) or bool((self.weight < 0).any()):
            raise ShapeMismatchError(f"{self.label}: window weights must be finite and >= 0")

    @property
    def output_dim(self) -> int:
        return int(self.index.shape[0])

    def coverage(self) -> torch.Tensor:
        """c_i = sum of the weights with which input entry i enters the windows (n_in,)."""
        out = torch.zeros(self.input_dim, dtype=torch.float64)
        return out.index_add_(0, self.index.reshape(-1), self.weight.reshape(-1).to(torch.float64))

    def constant(self) -> float:
        """The exact L2 Lipschitz constant sqrt(max_i c_i), in float64 (uncertified: see :meth:`certified_constant`)."""
        return math.sqrt(float(self.coverage().max())) if self.input_dim else 0.0

    def squared_upper(self) -> float:
        """An upper bound on :meth:`constant` squared: max_i c_i enlarged by the rounding of its sums (gamma_n)."""
        n = int(self.index.numel())
        return float(self.coverage().max()) * (1 + gamma(max(n, 1))) if self.input_dim else 0.0

    def certified_constant(self) -> float:
        """:meth:`constant`, certified: the root of :meth:`squared_upper` through ``rounding.certified_root``."""
        return float(certified_root(self.squared_upper(), 0.0))

    def windows(self, z: torch.Tensor) -> torch.Tensor:
        """sqrt(P_wj) x_{i(w, j)} for a flat batch (B, n_in): (B, n_out, K)."""
        return z[:, self.index] * self.weight.sqrt().to(z.dtype)

    def forward_flat(self, z: torch.Tensor) -> torch.Tensor:
        """y on a flat batch (B, n_in) in its dtype; the norm's subgradient at a zero window is 0."""
        return torch.linalg.vector_norm(self.windows(z), dim=-1)

    def fingerprint(self) -> str:
        return array_hash(self.index.numpy(), self.weight.numpy(), torch.tensor([self.input_dim]).numpy())

    def __repr__(self) -> str:
        return f"NormPool({self.label}: {self.input_dim} -> {self.output_dim}, constant {self.constant():.6g})"


def window_pool(shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], out_hw: Sequence[int],
                window_scale: torch.Tensor | None = None, label: str = "l2-norm pooling") -> NormPool:
    """The :class:`NormPool` of a 2-D pooling without padding on a per-sample ``shape`` (..., H, W).

    Window (h, w) of every leading index (channel) reads rows h s_h .. h s_h + k_h - 1 and columns
    w s_w .. w s_w + k_w - 1 that lie inside the input (a last window may be partial, as torch's
    ``ceil_mode`` makes it); ``out_hw`` is the output's (H_out, W_out).  Every entry of window w has weight
    ``window_scale[w]`` (flat over (..., H_out, W_out); default 1).
    """
    *lead, h, w = (int(s) for s in shape)
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in stride)
    ho, wo = (int(s) for s in out_hw)
    channels = math.prod(lead)
    if min(kh, kw, sh, sw) < 1 or ho < 1 or wo < 1 or (ho - 1) * sh >= h or (wo - 1) * sw >= w:
        raise ShapeMismatchError(f"{label}: kernel {(kh, kw)}, stride {(sh, sw)} and output {(ho, wo)} do not fit an "
                                 f"input of {(h, w)}")
    grid = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    pad_h, pad_w = max((ho - 1) * sh + kh - h, 0), max((wo - 1) * sw + kw - w, 0)
    grid = F.pad(grid, (0, pad_w, 0, pad_h), value=-1.0)[..., : (ho - 1) * sh + kh, : (wo - 1) * sw + kw]
    cols = F.unfold(grid, (kh, kw), stride=(sh, sw))[0].T  # (ho * wo, kh * kw) pixel indices, -1 outside
    inside = cols >= 0
    pixel = torch.where(inside, cols, torch.zeros_like(cols)).to(torch.int64)
    offsets = (torch.arange(channels, dtype=torch.int64) * (h * w)).reshape(-1, 1, 1)
    index = (pixel.unsqueeze(0) + offsets).reshape(channels * ho * wo, kh * kw)
    weight = inside.to(torch.float64).unsqueeze(0).expand(channels, -1, -1).reshape(channels * ho * wo, kh * kw)
    if window_scale is not None:
        scale = window_scale.detach().to(torch.float64).reshape(-1, 1)
        if scale.shape[0] != index.shape[0]:
            raise ShapeMismatchError(f"{label}: {scale.shape[0]} window scales for {index.shape[0]} windows")
        weight = weight * scale
    return NormPool(index, weight.contiguous(), channels * h * w, label)
