"""The result object of every Lipschitz bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import BoundMismatchError, ShapeMismatchError
from ..rounding import certified_root


def largest_eigenvalue(matrix: torch.Tensor) -> float:
    """lambda_max of a symmetric matrix in its own dtype (the entry itself for 1 x 1)."""
    return float(torch.linalg.eigvalsh(matrix)[-1]) if matrix.shape[0] > 1 else float(matrix[0, 0])


@dataclass(frozen=True)
class Gram:
    """G_L = exp(log_scale) * matrix: every bound of one certificate, Lip(c^T f) <= sqrt(c^T G_L c).

    All three readings end with :func:`lipcert.rounding.certified_root`.
    """

    matrix: torch.Tensor
    log_scale: float

    @property
    def value(self) -> float:
        """Bound on Lip_2(f): sqrt(lambda_max(G_L)), inflated."""
        return float(certified_root(largest_eigenvalue(self.matrix), self.log_scale))

    def along(self, c: np.ndarray) -> float:
        """Bound on Lip_2(c^T f): sqrt(c^T G_L c) with the cancellation floor, inflated."""
        g = self.matrix.detach().cpu().double().numpy()
        spread = float(np.abs(c) @ np.sqrt(np.clip(np.diag(g), 0, None)))
        return float(certified_root(float(c @ g @ c), self.log_scale, spread))

    def pairwise(self) -> np.ndarray:
        """K x K bounds on Lip_2(f_i - f_j): :meth:`along` for every c = e_i - e_j at once (0 on the diagonal)."""
        g = self.matrix.detach().cpu().double().numpy()
        d = np.diag(g)
        root = np.sqrt(np.clip(d, 0, None))
        out = certified_root(d[:, None] + d[None, :] - 2 * g, self.log_scale, root[:, None] + root[None, :])
        np.fill_diagonal(out, 0.0)
        return out


@dataclass(frozen=True)
class LipschitzBound:
    """An upper bound on the L2 Lipschitz constant of a :class:`~lipcert.Network`.

    Attributes
    ----------
    value : float
        Upper bound on Lip_2(f) = sup ||f(x) - f(y)||_2 / ||x - y||_2, in output units per
        input unit of the network's input space (raw pixels when the network carries its
        normalization).  Inflated by a relative 1e-8 to cover rounding.
    method : str
        The method that produced it (``"combined"``, ``"gc(1.99)"``, ...).
    per_rule : dict
        Value of every rule or sub-method that was run (one entry for a single rule).
    rule : str or None
        The rule whose value is ``value`` (the winner of a combination).
    multipliers : tuple of Tensor
        Per-layer diagonal multipliers lambda_k of the winning certificate (true scale), so
        that (rho, T_k) = (value^2, value^2 diag(lambda_k)) is LipSDP-Neuron feasible.
    slopes : tuple of (Tensor, Tensor)
        The per-neuron slope bounds the certificate uses (after relaxations).
    seconds : float
        Wall time of the computation.
    status : str
        ``"ok"``, or a short note (fallbacks taken, solver status).
    network : str
        :meth:`~lipcert.Network.fingerprint` of the network bounded (empty when unknown); consumers
        refuse a bound whose fingerprint is not that of the network they certify.
    """

    value: float
    method: str
    per_rule: dict[str, float]
    rule: str | None
    multipliers: tuple[torch.Tensor, ...]
    slopes: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    seconds: float
    status: str = "ok"
    grams: dict[str, Gram] = field(default_factory=dict, repr=False)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)
    network: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return (f"LipschitzBound(value={self.value:.6g}, method={self.method!r}, rule={self.rule!r}, "
                f"seconds={self.seconds:.3g}, status={self.status!r})")

    def __float__(self) -> float:
        return self.value

    def require_network(self, fingerprint: str) -> None:
        """Refuse (:class:`~lipcert.errors.BoundMismatchError`) unless this bound was computed for the
        network whose :meth:`~lipcert.Network.fingerprint` is ``fingerprint``."""
        if self.network != fingerprint:
            why = "carries no network fingerprint" if not self.network else "was computed for another network"
            raise BoundMismatchError(
                f"bound {self.method!r} (value {self.value:.6g}) {why}: its radii would not hold for this one (a "
                "changed normalization, weights or slopes); compute it with lipcert.lipschitz on this network")

    def pairwise(self) -> np.ndarray:
        """K x K matrix whose (i, j) entry bounds Lip(f_i - f_j) (min over every certificate run)."""
        if not self.grams:
            raise ValueError(f"method {self.method!r} gives no margin bounds")
        return np.minimum.reduce([g.pairwise() for g in self.grams.values()])

    def along(self, c: np.ndarray | torch.Tensor | list[float]) -> float:
        """Upper bound on Lip(c^T f) for an output direction c (min over every certificate run)."""
        vec = np.asarray(c.detach().cpu() if isinstance(c, torch.Tensor) else c, dtype=np.float64).ravel()
        if not self.grams:
            raise ValueError(f"method {self.method!r} gives no margin bounds")
        k = next(iter(self.grams.values())).matrix.shape[0]
        if vec.shape != (k,):
            raise ShapeMismatchError(f"direction must have {k} entries (one per output), got {vec.shape[0]}")
        return min(g.along(vec) for g in self.grams.values())
