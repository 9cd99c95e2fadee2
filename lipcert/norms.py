"""Norms of input balls and radii: parsing, radius checks, and the L2-to-norm radius scale.

Every bound in lipcert is an L2 constant.  A radius in the L-infinity norm follows from one in L2
through ||v||_2 <= sqrt(d) ||v||_inf (d the input dimension): the L-infinity ball of radius r lies
in the L2 ball of radius r sqrt(d), so an L2 radius rho proves the L-infinity radius rho / sqrt(d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .errors import InvalidNormError, InvalidRadiusError

Norm = Literal["2", "inf"]
"""A parsed norm: ``"2"`` or ``"inf"``."""
NORMS: tuple[Norm, ...] = ("2", "inf")


def parse_norm(norm: str | float | int) -> Norm:
    """``2``, ``"2"``, ``"l2"`` -> ``"2"``; ``inf``, ``"inf"``, ``"linf"`` -> ``"inf"``.

    Raises :class:`~lipcert.errors.InvalidNormError` for any other norm.
    """
    text = str(norm).strip().lower().replace("-", "").replace("_", "")
    if text in ("2", "2.0", "l2"):
        return "2"
    if text in ("inf", "linf", "infinity", "linfinity"):
        return "inf"
    raise InvalidNormError(f"unsupported norm {norm!r}: use 2 (or l2) or inf (or linf)")


def check_eps(eps: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """eps as a float64 array, or :class:`~lipcert.errors.InvalidRadiusError` naming the first bad value."""
    try:
        arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    except (TypeError, ValueError):
        raise InvalidRadiusError(f"eps must be a number or a list of numbers, got {eps!r}") from None
    if arr.ndim != 1:
        raise InvalidRadiusError(f"eps must be a number or a flat list of numbers, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        raise InvalidRadiusError(f"eps must be finite and >= 0, got {float(arr[bad][0])!r}")
    return arr


def radius_scale(norm: Norm, input_dim: int) -> float:
    """Factor from an L2 radius to the radius it proves in ``norm``: 1 (L2) or 1 / sqrt(d) (L-infinity)."""
    return 1.0 if norm == "2" else 1.0 / math.sqrt(input_dim)


def l2_radius(radius: float, norm: Norm, input_dim: int) -> float:
    """Radius of the L2 ball that holds the ``norm`` ball of ``radius``: r (L2) or r sqrt(d) (L-infinity);
    the inverse of :func:`radius_scale`."""
    return radius if norm == "2" else radius * math.sqrt(input_dim)
