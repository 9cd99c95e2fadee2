"""Closed-form multiplier rules Lambda_k = rule(Gamma_k) (math.md section 4.3).

Each rule maps a normalized PSD matrix Gamma (max diagonal 1) to a positive vector lambda with
2 diag(1/lambda) - Gamma > 0, which by Theorem 1 makes M = 2 Lambda - Lambda Gamma Lambda
positive definite.  All rules are degree -1 homogeneous (rule(t Gamma) = rule(Gamma) / t), which
is what lets the recursion renormalize every layer.

=============  =================================================  ===========
rule           lambda_i                                           valid for
=============  =================================================  ===========
SN(c)          c / lambda_max(Gamma)                              0 < c < 2
GC(c)          c / r_i,  r_i = sum_j |Gamma_ij|                   0 < c < 2
Shift(c)       2 / (Gamma_ii + c lambda_max(Gamma - Diag Gamma))  c > 1
GCs(c)         c / (r_i lambda_max(R^-1/2 Gamma R^-1/2))          0 < c < 2
=============  =================================================  ===========

SN(1) is ECLipsE-Fast.  Shift uses lambda_max of the off-diagonal part rather than its norm,
which is valid and slightly tighter (math.md section 4.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import InvalidParameterError
from .eigen import ESTIMATE_DENSE_BELOW, lambda_max, top_eigenvalue  # lambda_max: re-exported for sdp

RULE_KINDS = ("sn", "gc", "shift", "gcs")
DEFAULT_C = {"sn": 1.0, "gc": 1.99, "shift": 1.5, "gcs": 1.5}


@dataclass(frozen=True)
class Rule:
    """One closed-form rule with its parameter c."""

    kind: str
    c: float

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise InvalidParameterError(f"unknown rule {self.kind!r}; known: {', '.join(RULE_KINDS)}")
        if self.kind == "shift":
            if not self.c > 1:
                raise InvalidParameterError(f"shift(c) needs c > 1, got c={self.c}")
        elif not 0 < self.c < 2:
            raise InvalidParameterError(f"{self.kind}(c) needs 0 < c < 2, got c={self.c}")

    @property
    def name(self) -> str:
        return f"{self.kind}({self.c:g})"

    def __call__(self, gamma: torch.Tensor, cache: dict[str, object] | None = None) -> torch.Tensor:
        """lambda for a symmetric PSD Gamma with strictly positive diagonal.

        The eigenvalues the rules need are Lanczos estimates (:func:`.eigen.top_eigenvalue`):
        the driver's Cholesky decides feasibility, so an estimate is enough.  ``cache`` (one
        dict per Gamma) shares row sums and eigenvalue estimates between rules on the same Gamma.
        """
        memo: dict[str, object] = {} if cache is None else cache
        c = self.c
        if self.kind == "sn":
            return torch.full_like(gamma[0], c / _top(gamma, memo, "sn"))
        rows = _rows(gamma, memo)
        if self.kind == "gc":
            return c / rows
        if self.kind == "shift":
            return 2.0 / (torch.diagonal(gamma) + c * _top(gamma, memo, "shift"))
        return c / (rows * _top(gamma, memo, "gcs"))

    def fallbacks(self) -> Iterator[Rule]:
        """This rule, then the same rule with c moved inward, then SN(1) (math.md section 5)."""
        yield self
        c = self.c
        for _ in range(3):
            c = 2 * c if self.kind == "shift" else (1 + c) / 2
            if self.kind != "shift" and abs(c - 1) < 1e-3:
                break
            yield Rule(self.kind, c)
        if (self.kind, self.c) != ("sn", 1.0):
            yield Rule("sn", 1.0)


def parse_rule(text: str, c: float | None = None) -> Rule:
    """``"gc"`` (default c), ``"gc(1.7)"`` or ``("gc", c=1.7)`` to a :class:`Rule`."""
    kind, _, rest = text.strip().lower().partition("(")
    if rest:
        try:
            value = float(rest.rstrip(")"))
        except ValueError as exc:
            raise InvalidParameterError(f"cannot read the parameter of rule {text!r}") from exc
        if c is not None and c != value:
            raise InvalidParameterError(f"rule {text!r} given together with c={c}")
        c = value
    if kind not in RULE_KINDS:
        raise InvalidParameterError(f"unknown rule {kind!r}; known: {', '.join(RULE_KINDS)}")
    return Rule(kind, DEFAULT_C[kind] if c is None else float(c))


# math.md section 4.3, "Recommended default for the library".
DEFAULT_RULE_SET: tuple[Rule, ...] = (
    Rule("sn", 1.0),
    Rule("gc", 1.5), Rule("gc", 1.7), Rule("gc", 1.99),
    Rule("shift", 1.3), Rule("shift", 1.5), Rule("shift", 1.7),
    Rule("gcs", 1.0), Rule("gcs", 1.5),
)


def spectral_top(gamma: torch.Tensor, cache: dict[str, object]) -> float:
    """Estimate of lambda_max(Gamma), the one SN(c) uses (cached in ``cache``)."""
    return _top(gamma, cache, "sn")


def _rows(gamma: torch.Tensor, memo: dict[str, object]) -> torch.Tensor:
    """Gershgorin row sums r_i = sum_j |Gamma_ij| (cached)."""
    rows = memo.get("rows")
    if not isinstance(rows, torch.Tensor):
        rows = memo["rows"] = gamma.abs().sum(dim=1)
    return rows


def _top(gamma: torch.Tensor, memo: dict[str, object], kind: str) -> float:
    """Estimated lambda_max of Gamma ("sn"), of Gamma - Diag Gamma ("shift"), or of R^-1/2 Gamma R^-1/2 ("gcs")."""
    key = f"top:{kind}"
    cached = memo.get(key)
    if isinstance(cached, float):
        return cached
    n = gamma.shape[0]
    dtype, device = gamma.dtype, gamma.device
    if kind == "sn":
        value = top_eigenvalue(lambda v: gamma @ v, n, dense=gamma, dtype=dtype, device=device)
    elif kind == "shift":
        diag = torch.diagonal(gamma)
        dense = gamma - torch.diag(diag) if n < ESTIMATE_DENSE_BELOW else None
        value = top_eigenvalue(lambda v: gamma @ v - diag * v, n, dense=dense, dtype=dtype, device=device)
    else:
        inv_sqrt = _rows(gamma, memo).rsqrt()
        dense = gamma * inv_sqrt[:, None] * inv_sqrt[None, :] if n < ESTIMATE_DENSE_BELOW else None
        value = top_eigenvalue(lambda v: inv_sqrt * (gamma @ (inv_sqrt * v)), n, dense=dense,
                               dtype=dtype, device=device)
    memo[key] = value
    return value
