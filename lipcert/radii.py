"""Certified radii from logit margins and pairwise Lipschitz constants.

For an input x with label y and logits f(x), every pair (y, j) has a constant L_yj >= Lip_2(f_y - f_j)
(:meth:`~lipcert.LipschitzBound.pairwise`, math.md section 7(i)), so the prediction y cannot change
inside the L2 ball of radius

    r(x) = min_{j != y} (f_y(x) - f_j(x) - tol_j(x)) / L_yj          (0 when x is misclassified)

where tol_j(x) bounds the floating-point error of the computed margin
(:func:`lipcert.rounding.logit_error_bound`).  A radius in another norm is r(x) times
:func:`lipcert.norms.radius_scale`.
"""

from __future__ import annotations

import math

import numpy as np

from .bounds.result import LipschitzBound
from .errors import ShapeMismatchError
from .graph import AnyNetwork
from .rounding import UNIT_ROUNDOFF

_SQRT2_SLACK = 1 + 1e-12
"""Relative slack on sqrt(2) Lip(f) (the rounding of sqrt(2) and of the product)."""


def pairwise_constants(bound: LipschitzBound, network: AnyNetwork) -> np.ndarray:
    """K x K bounds on Lip(f_i - f_j) of ``network``; sqrt(2) Lip(f) (as ||e_i - e_j|| = sqrt(2)) when
    the method gives no margin bounds.  A bound of another network is refused
    (:class:`~lipcert.errors.BoundMismatchError`)."""
    bound.require_network(network.fingerprint())
    k = network.output_dim
    try:
        pair = bound.pairwise()
    except ValueError:
        pair = np.full((k, k), math.sqrt(2) * bound.value * _SQRT2_SLACK)
        np.fill_diagonal(pair, 0.0)
    if pair.shape != (k, k):
        raise ShapeMismatchError(f"bound {bound.method!r} has {pair.shape[0]} outputs, the network {k}")
    return pair


def pair_radii(logits: np.ndarray, err: np.ndarray, labels: np.ndarray, pair: np.ndarray,
               scale: float) -> np.ndarray:
    """Radius (L2 radius times ``scale``) that each pair (y, j) proves, shape (N, K); inf at j = y.

    A pair (y, j) certifies (f_y - f_j - tol_j) / L_yj with tol_j = 2 err + 2 u |f_y - f_j|; a pair
    with L_yj = 0 and a positive margin imposes no limit.  Radii are shrunk by 8 ulps so that every
    rounding in this computation errs towards a smaller radius; a misclassified input gets 0.
    """
    rows = np.arange(labels.shape[0])
    fy = logits[rows, labels][:, None]
    diff = fy - logits
    low = diff - 2 * err[:, None] - 2 * UNIT_ROUNDOFF * np.abs(diff)
    lip = pair[labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(lip > 0, low / lip, np.where(low > 0, np.inf, 0.0))
    r[rows, labels] = np.inf
    r[np.isnan(r)] = 0.0
    r = np.clip(r, 0.0, None) * scale * (1 - 8 * UNIT_ROUNDOFF)
    return np.where((logits.argmax(axis=1) == labels)[:, None], r, 0.0)


def radii_from_margins(logits: np.ndarray, err: np.ndarray, labels: np.ndarray, pair: np.ndarray,
                       scale: float) -> np.ndarray:
    """Certified radii (L2 radius times ``scale``) of a batch: the smallest :func:`pair_radii` of each input."""
    return pair_radii(logits, err, labels, pair, scale).min(axis=1)
