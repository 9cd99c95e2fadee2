"""Floating-point rounding: the one home of every rounding margin a certificate relies on.

* Every certified constant ends with the same step: sqrt(q) exp(s / 2), with q = lambda_max(G) or
  q = c^T G c of a Gram matrix G and the log-scale s it is stored with, inflated by the relative
  :data:`INFLATION` to cover the float64 rounding of the eigenvalue or quadratic form, the square
  root and the exponential (math.md section 5, rigour): :func:`certified_root`.
* A quadratic form c^T G c that cancels (G_ii + G_jj - 2 G_ij for a margin) gets the absolute floor
  :data:`CANCELLATION` (sum_i |c_i| sqrt(G_ii))^2 before the square root.
* Dot products: Higham's gamma_n (Accuracy and Stability of Numerical Algorithms, Thm 3.5):
  |fl(x^T y) - x^T y| <= gamma_n |x|^T |y| for n terms, u the unit roundoff.
* :func:`logit_error_bound` bounds the rounding error of a float64 forward pass, logit by logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-53
"""u of float64: |fl(a op b) - a op b| <= u |a op b|."""
INFLATION = 1e-8
"""Relative inflation of every certified constant (the final step of :func:`certified_root`)."""
CANCELLATION = 1e-11
"""Floor of a quadratic form c^T G c before its square root, relative to (sum_i |c_i| sqrt(G_ii))^2."""

_Values = TypeVar("_Values", float, np.ndarray, torch.Tensor)


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u): the relative rounding error of an n-term dot product (n u < 1)."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def affine_gamma(n: int) -> float:
    """2 gamma_{n+1}: bound on the relative error of an n-term dot product plus a bias, doubled for safety."""
    return 2 * gamma(n + 1)


def inflate(values: _Values, log_scale: float) -> _Values:
    """values * exp(log_scale / 2) * (1 + :data:`INFLATION`): the last step of every certified constant."""
    return values * math.exp(log_scale / 2) * (1 + INFLATION)


def certified_root(q: float | np.ndarray, log_scale: float, spread: float | np.ndarray = 0.0) -> np.ndarray:
    """Certified sqrt(q exp(log_scale)) of float64 quadratic forms or eigenvalues q (elementwise).

    sqrt(max(q, 0) + :data:`CANCELLATION` spread^2) exp(log_scale / 2) (1 + :data:`INFLATION`), with
    ``spread`` = sum_i |c_i| sqrt(G_ii) for q = c^T G c (its scale when it cancels) and 0 for an eigenvalue.
    Returns float64 values (a numpy scalar for scalar q).
    """
    return inflate(np.sqrt(np.maximum(q, 0.0) + CANCELLATION * np.square(spread)), log_scale)


# ---------------------------------------------------------------------------------- forward passes
class Chain(Protocol):
    """What :func:`error_layers` reads of a :class:`~lipcert.Network`."""

    @property
    def weights(self) -> Sequence[torch.Tensor]: ...

    @property
    def biases(self) -> Sequence[torch.Tensor]: ...

    @property
    def activations(self) -> Sequence[Any]: ...

    @property
    def alphas(self) -> Sequence[torch.Tensor]: ...

    @property
    def betas(self) -> Sequence[torch.Tensor]: ...


@dataclass(frozen=True)
class ErrorLayer:
    """One affine layer and the activation after it, with the norms its rounding-error bound needs."""

    weight: Any         # the (n_k, n_{k-1}) matrix, or an operator layer (matmat, kernel: a convolution)
    bias: torch.Tensor
    activation: Any
    row_abs: float      # ||W||_inf: max row sum of |W|
    row_norm: float     # max row 2-norm of W
    bias_abs: float     # max |b|
    gamma: float        # 2 * gamma_{n+1}, n the inner dimension
    slope: float        # max |slope| of the activation after this layer (0 for the last layer)
    exact_activation: bool


EXACT_ACTIVATIONS = ("relu", "relu6", "hardtanh", "abs", "abs_or_identity")
"""Activations computed without rounding (comparisons, copies and sign changes)."""


def error_layers(net: Chain) -> list[ErrorLayer]:
    """The layers of a network with the norms :func:`logit_error_bound` needs (computed once per network).

    An operator layer (a convolution with kernel K, ``Network.operators``) takes the norms of K: every
    row of the convolution holds a subset of one output channel's kernel entries (of one input channel's,
    for its adjoint), in sums of at most C_in/g kh kw (C_out/g kh kw) products.
    """
    out = []
    ops = list(getattr(net, "operators", ()) or [None] * len(net.weights))
    for k, (w, b, op) in enumerate(zip(net.weights, net.biases, ops)):
        act = net.activations[k] if k < len(net.activations) else None
        slope = 0.0 if act is None else float(torch.maximum(net.alphas[k].abs(), net.betas[k].abs()).max())
        exact = act is None or act.name.split("(")[0] in EXACT_ACTIVATIONS
        if op is None:
            row_abs, row_norm, terms, linear = float(w.abs().sum(1).max()), float(w.norm(dim=1).max()), w.shape[1], w
        else:
            kernel = op.kernel if not op.adjoint else op.kernel.reshape(op.groups, -1, *op.kernel.shape[1:]).transpose(1, 2)
            rows = kernel.reshape(-1, *kernel.shape[-3:]) if op.adjoint else kernel  # one row per output channel
            row_abs, row_norm = float(rows.abs().sum((1, 2, 3)).max()), float(rows.flatten(1).norm(dim=1).max())
            terms, linear = rows[0].numel(), op
        out.append(ErrorLayer(linear, b, act, row_abs, row_norm, float(b.abs().max()) if b.numel() else 0.0,
                              affine_gamma(terms), slope, exact))
    return out


def logit_error_bound(layers: list[ErrorLayer], x: torch.Tensor,
                      carried: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits of a flat batch and a bound on the rounding error of every logit.

    ``carried`` (B,) bounds an error already in every entry of ``x`` (a chain inside a larger graph).

    Standard error analysis (Higham, Thm 3.5): |fl(W a + b) - (W a + b)| <= gamma_{n+1} (|W| |a| + |b|),
    and sum_j |W_ij| |a_j| <= ||W_i||_2 ||a||_2.  With E_{k-1} the bound on the error carried in a,
    the pre-activation error is at most ||W||_inf E_{k-1} + gamma (max_i ||W_i|| ||a||_2 + max |b|),
    the activation multiplies it by its largest |slope| and adds its own rounding
    (16 u (||phi(z)|| + |slope| ||z||), 0 for ReLU-like maps).  ``gamma`` is doubled for safety.
    """
    a = x
    a_norm = x.norm(dim=1)
    err = torch.zeros(x.shape[0], dtype=torch.float64) if carried is None else carried
    for layer in layers:
        w = layer.weight
        z = (a @ w.T if isinstance(w, torch.Tensor) else w.matmat(a)) + layer.bias
        err = layer.row_abs * err + layer.gamma * (layer.row_norm * a_norm + layer.bias_abs)
        if layer.activation is None:
            return z, err
        a = layer.activation(z)
        a_norm = a.norm(dim=1)
        err = layer.slope * err
        if not layer.exact_activation:
            err = err + 16 * UNIT_ROUNDOFF * (a_norm + layer.slope * z.norm(dim=1))
    return a, err  # pragma: no cover - a network always ends with an affine map
