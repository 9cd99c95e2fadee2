"""The result object of every Lipschitz bound."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ShapeMismatchError

# Floor added to c^T G c before the square root: covers cancellation in G_ii + G_jj - 2 G_ij.
_CANCEL = 1e-11
_INFLATE = 1 + 1e-8


@dataclass(frozen=True)
class Gram:
    """G_L = exp(log_scale) * matrix: every margin bound of one certificate, Lip(c^T f) <= sqrt(c^T G_L c)."""

    matrix: torch.Tensor
    log_scale: float

    def along(self, c: np.ndarray) -> float:
        g = self.matrix.detach().cpu().double().numpy()
        q = float(c @ g @ c)
        floor = _CANCEL * float(np.abs(c) @ np.sqrt(np.clip(np.diag(g), 0, None))) ** 2
        return math.sqrt(max(q, 0.0) + floor) * math.exp(self.log_scale / 2) * _INFLATE

    def pairwise(self) -> np.ndarray:
        g = self.matrix.detach().cpu().double().numpy()
        d = np.diag(g)
        q = d[:, None] + d[None, :] - 2 * g
        out = np.sqrt(np.clip(q, 0, None) + _CANCEL * (d[:, None] + d[None, :])) * math.exp(self.log_scale / 2)
        out *= _INFLATE
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

    def __repr__(self) -> str:
        return (f"LipschitzBound(value={self.value:.6g}, method={self.method!r}, rule={self.rule!r}, "
                f"seconds={self.seconds:.3g}, status={self.status!r})")

    def __float__(self) -> float:
        return self.value

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
