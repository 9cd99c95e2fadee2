"""orthogonium's L2NormResidual as a stage of a network graph: z = sqrt(x^2 / 2 + g(x)^2 / 2 + eps) (decisions 44).

Per entry, phi(a, b) = sqrt(a^2 / 2 + b^2 / 2 + eps) = ||(a, b, sqrt(2 eps))||_2 / sqrt(2) is 1/sqrt(2)-Lipschitz
in (a, b) jointly (reverse triangle inequality), so summing over entries
||z(x) - z(x')||^2 <= (||x - x'||^2 + ||g(x) - g(x')||^2) / 2 <= (1 + Lip(g)^2) / 2 ||x - x'||^2:
the stage is sqrt((1 + Lip(g)^2) / 2)-Lipschitz, which no function of Lip(g) alone can improve (g = L x on
one entry with eps -> 0 attains it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ShapeMismatchError
from .network import Network
from .rounding import certified_root


@dataclass(frozen=True, eq=False)
class NormResidual:
    """z = sqrt(x^2 / 2 + g(x)^2 / 2 + eps) entry by entry, g a chain from n to n entries.

    Attributes
    ----------
    branch : Network
        g (orthogonium's ``fn``), on flat vectors.
    eps : float
        The constant under the root (>= 0).
    """

    branch: Network
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.branch, Network) or self.branch.input_dim != self.branch.output_dim:
            raise ShapeMismatchError("an L2-norm residual needs a chain branch with as many outputs as inputs")
        if not self.eps >= 0:
            raise ShapeMismatchError(f"an L2-norm residual needs eps >= 0, got {self.eps}")

    @property
    def input_dim(self) -> int:
        return self.branch.input_dim

    @property
    def output_dim(self) -> int:
        return self.branch.output_dim

    def merge(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """sqrt(0.5 x^2 + 0.5 out^2 + eps), in the order orthogonium computes it."""
        return torch.sqrt(0.5 * x**2 + 0.5 * out**2 + self.eps)


def norm_residual_squared(branch_bound: float) -> float:
    """(1 + L^2) / 2 for a bound L on Lip(g), enlarged by the rounding of the square, the sum and the halving."""
    return (1.0 + branch_bound**2) / 2 * (1 + 4e-16)


def norm_residual_constant(branch_bound: float) -> float:
    """Certified sqrt((1 + L^2) / 2): :func:`norm_residual_squared` through ``rounding.certified_root``."""
    return float(certified_root(norm_residual_squared(branch_bound), 0.0))
