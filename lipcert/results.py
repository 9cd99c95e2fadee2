"""The protocol every certification result answers, and the eps-grid lookup the verifier results share.

A certification result (:class:`~lipcert.Certification`, :class:`~lipcert.BatchCertificates`,
:class:`~lipcert.Combination`, :class:`~lipcert.adapters.lirpa.Verification`,
:class:`~lipcert.adapters.lirpa.RadiusSearch`) states, for N inputs and one norm, which balls
``||x' - x|| <= eps`` are proven to keep the label:

- ``radius``: ndarray (N,), the best proven radius per input (in the result's norm, input
  units; 0 when nothing is proven), a sound lower bound on the robust radius;
- ``certified(eps)``: ndarray of bool (N,), correctly classified and proven at ``eps``;
- ``certified_accuracy(eps)``: ndarray (E,), the share of inputs certified at each eps (a float
  or a sequence);
- ``seconds``: float, wall time of the call that made the result.

Results of a bound-propagation verifier know only the eps they were run at (their grid); asking
them about another eps raises :class:`~lipcert.errors.EpsNotInGridError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import EpsNotInGridError
from .norms import check_eps

EpsLike = float | Sequence[float] | np.ndarray
"""One eps or several (a radius in the result's norm, input units)."""


@runtime_checkable
class Certificates(Protocol):
    """What every certification result answers (see the module docstring for the units)."""

    @property
    def radius(self) -> np.ndarray:
        """(N,) best proven radius per input; 0 where nothing is proven."""
        ...

    @property
    def seconds(self) -> float:
        """Wall time of the call that made the result."""
        ...

    def certified(self, eps: float) -> np.ndarray:
        """(N,) bool: correctly classified and proven at ``eps``."""
        ...

    def certified_accuracy(self, eps: EpsLike) -> np.ndarray:
        """(E,) share of inputs certified at each eps."""
        ...


def grid_rows(grid: np.ndarray, eps: EpsLike | None) -> np.ndarray:
    """Positions in ``grid`` of each eps (all of ``grid`` for None).

    Raises :class:`~lipcert.errors.EpsNotInGridError` for an eps that is not in ``grid`` (up to a
    relative 1e-12).
    """
    if eps is None:
        return np.arange(len(grid))
    rows = []
    for e in check_eps(eps):
        hits = np.flatnonzero(np.isclose(grid, e, rtol=1e-12, atol=0.0))
        if hits.size == 0:
            raise EpsNotInGridError(f"eps {float(e)!r} was not verified; verified eps: {np.asarray(grid).tolist()}")
        rows.append(hits[0])
    return np.asarray(rows, dtype=np.int64)


def largest_proven(grid: np.ndarray, proven: np.ndarray) -> np.ndarray:
    """(N,) the largest eps of ``grid`` (E,) at which ``proven`` (E, N) holds per input, 0 if none."""
    if proven.size == 0:
        return np.zeros(proven.shape[1] if proven.ndim == 2 else 0)
    return np.where(proven, np.asarray(grid, dtype=np.float64)[:, None], 0.0).max(axis=0)
