"""Linear maps kept as operators instead of dense matrices: 2-D convolutions.

A :class:`Conv2dOperator` is the linear part of a ``Conv2d`` (stride, zero or circular padding,
dilation, groups) on one input shape, or of a ``ConvTranspose2d`` as the adjoint of that
convolution.  It acts on flat vectors in PyTorch flatten order (channel, row, column), so it is
interchangeable with the dense matrix :meth:`Conv2dOperator.dense` that adapters used to build:
``op.matmat(x) == x @ op.dense().T``.  Memory is that of the kernel; the dense matrix costs
:attr:`Conv2dOperator.dense_nbytes` and is built only on request (docs/decisions.md 21).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import DenseTooLargeError, ShapeMismatchError

DEFAULT_MAX_DENSE_BYTES = 4 * 10**9
"""Default limit on the dense float64 matrices an operator network may be materialized into (4 GB)."""


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 2:
        raise ShapeMismatchError(f"expected one int or a pair, got {v!r}")
    return t[0], t[1]


@dataclass(frozen=True, eq=False)
class Conv2dOperator:
    """x -> conv2d(x, kernel) on inputs of shape ``in_shape`` (C_in, H, W), or its adjoint.

    Attributes
    ----------
    kernel : Tensor
        (C_out, C_in / groups, kh, kw), float64.
    in_shape : tuple of int
        (C_in, H, W) of the *convolution's* input.
    stride, dilation : (int, int)
    padding : (top, bottom, left, right)
        Zeros (``circular=False``) or wrapped rows and columns (``circular=True``).
    groups : int
    adjoint : bool
        The operator is the adjoint (transpose) of the convolution: a ``ConvTranspose2d`` with the
        same kernel, mapping (C_out, H_out, W_out) to ``in_shape``.
    """

    kernel: torch.Tensor
    in_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    circular: bool = False
    adjoint: bool = False

    @classmethod
    def conv(cls, kernel: torch.Tensor, in_shape: tuple[int, ...], *, stride: int | tuple[int, ...] = 1,
             padding: int | tuple[int, ...] = 0, dilation: int | tuple[int, ...] = 1, groups: int = 1,
             circular: bool = False, adjoint: bool = False) -> Conv2dOperator:
        """A checked operator; ``padding`` is p, (p_h, p_w) or (top, bottom, left, right)."""
        k = torch.as_tensor(kernel).detach().to("cpu", torch.float64)
        if k.ndim != 4:
            raise ShapeMismatchError(f"a Conv2d kernel has 4 axes (C_out, C_in/groups, kh, kw), got {tuple(k.shape)}")
        if not torch.isfinite(k).all():
            raise ShapeMismatchError("the convolution kernel has non-finite entries")
        shape = tuple(int(s) for s in in_shape)
        if len(shape) != 3:
            raise ShapeMismatchError(f"a Conv2d input shape is (C, H, W), got {shape}")
        if shape[0] != k.shape[1] * groups or k.shape[0] % groups:
            raise ShapeMismatchError(f"kernel {tuple(k.shape)} with groups={groups} does not take {shape[0]} channels")
        pad = (padding,) * 4 if isinstance(padding, int) else tuple(int(p) for p in padding)
        if len(pad) == 2:
            pad = (pad[0], pad[0], pad[1], pad[1])
        if len(pad) != 4 or min(pad) < 0:
            raise ShapeMismatchError(f"padding must be p, (p_h, p_w) or (top, bottom, left, right) >= 0, got {padding!r}")
        op = cls(k, (shape[0], shape[1], shape[2]), _pair(stride), (pad[0], pad[1], pad[2], pad[3]),
                 _pair(dilation), int(groups), bool(circular), bool(adjoint))
        if min(op.conv_out_shape) < 1:
            raise ShapeMismatchError(f"the convolution leaves no output on an input of shape {shape}")
        return op

    # ------------------------------------------------------------------ shapes
    @property
    def conv_out_shape(self) -> tuple[int, int, int]:
        """(C_out, H_out, W_out) of the convolution (before any adjoint)."""
        c, h, w = self.in_shape
        kh, kw = self.kernel.shape[2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        t, b, left, r = self.padding
        return (int(self.kernel.shape[0]), (h + t + b - dh * (kh - 1) - 1) // sh + 1,
                (w + left + r - dw * (kw - 1) - 1) // sw + 1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input of the operator."""
        return self.conv_out_shape if self.adjoint else self.in_shape

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one output of the operator."""
        return self.in_shape if self.adjoint else self.conv_out_shape

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the matrix the operator stands for."""
        return math.prod(self.output_shape), math.prod(self.input_shape)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense float64 matrix."""
        rows, cols = self.shape
        return 8 * rows * cols

    @property
    def nbytes(self) -> int:
        """Bytes the operator holds (its kernel)."""
        return self.kernel.numel() * self.kernel.element_size()

    def describe(self) -> str:
        kind = "ConvTranspose2d" if self.adjoint else "Conv2d"
        c_out, c_in = self.kernel.shape[0], self.in_shape[0]
        if self.adjoint:
            c_out, c_in = c_in, c_out
        return (f"{kind} {c_in}->{c_out}, kernel {tuple(self.kernel.shape[2:])}, stride {self.stride}, "
                f"padding {self.padding}{' circular' if self.circular else ''}, dilation {self.dilation}, "
                f"groups {self.groups}, input {self.input_shape}")

    # ------------------------------------------------------------------ products
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        t, b, left, r = self.padding
        x = F.pad(x, (left, r, t, b), mode="circular" if self.circular else "constant")
        return F.conv2d(x, self.kernel.to(x), stride=self.stride, dilation=self.dilation, groups=self.groups)

    def _conv_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        x0 = torch.zeros(y.shape[0], *self.in_shape, dtype=y.dtype, device=y.device)
        vjp = torch.func.vjp(self._conv, x0)[1]
        return vjp(y)[0]

    def matmat(self, x: torch.Tensor) -> torch.Tensor:
        """A x for a batch of flat inputs x of shape (B, cols); returns (B, rows)."""
        z = x.reshape(x.shape[0], *self.input_shape)
        out = self._conv_adjoint(z) if self.adjoint else self._conv(z)
        return out.reshape(x.shape[0], -1)

    def rmatmat(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for a batch of flat outputs y of shape (B, rows); returns (B, cols)."""
        z = y.reshape(y.shape[0], *self.output_shape)
        out = self._conv(z) if self.adjoint else self._conv_adjoint(z)
        return out.reshape(y.shape[0], -1)

    def dense(self, max_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> torch.Tensor:
        """The (rows, cols) float64 matrix; :class:`DenseTooLargeError` above ``max_bytes``."""
        if self.dense_nbytes > max_bytes:
            raise DenseTooLargeError(f"{self.describe()}: its dense matrix needs {self.dense_nbytes / 1e9:.3g} GB, over "
                                     f"the limit of {max_bytes / 1e9:.3g} GB; use a matrix-free method (naive) or "
                                     "raise the limit")
        rows, cols = self.shape
        out = torch.empty(rows, cols, dtype=torch.float64)
        chunk = max(1, 2**22 // max(rows, cols))
        for i0 in range(0, cols, chunk):
            i1 = min(cols, i0 + chunk)
            eye = torch.zeros(i1 - i0, cols, dtype=torch.float64)
            eye[torch.arange(i1 - i0), torch.arange(i0, i1)] = 1.0
            out[:, i0:i1] = self.matmat(eye).T
        return out

    def key(self) -> tuple[object, ...]:
        """Everything but the kernel that defines the map (for fingerprints)."""
        return ("Conv2dOperator", self.in_shape, self.stride, self.padding, self.dilation, self.groups,
                self.circular, self.adjoint)


LinearOperator = Conv2dOperator
"""The operator types a :class:`~lipcert.Network` layer may hold instead of a dense matrix."""
