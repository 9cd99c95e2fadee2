"""lipcert's residual-block certificate as a differentiable function of the weights, for training (decisions 49).

For a block h(x) = S x + G sigma(W x + b), slopes [alpha, beta] per neuron, in canonical form
(S' = S + G diag(alpha) W, V = diag(beta - alpha) W, slopes [0, 1]; :func:`.block_form.canonical`),
every choice of multipliers lambda > 0 with M = 2 Lambda - Lambda V V^T Lambda > 0 certifies

    Lip(h)^2 <= lambda_max(S' S'^T + (S' V^T Lambda + G) M^{-1} (S' V^T Lambda + G)^T)

(the carried form E_next of decisions 31 from E = I).  The multipliers are a choice: any feasible
one gives a valid certificate, so they are chosen by :func:`.residual_block.block_constant` on the
detached weights (its closed-form rules and their minimum) and held fixed, and the value is then a
differentiable function of (S, W, G) through a Cholesky factor, a triangular solve and the top
eigenvalue.  With the multipliers block_constant chose, the value is its raw bound (before the 1e-8
inflation).  Values here are training-time values, not certificates: a trained network is certified
afterwards by lipcert's rigorous bounds.
"""

from __future__ import annotations

import torch

from ..errors import InfeasibleCertificateError, ShapeMismatchError
from .residual_block import block_constant


def block_value(shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                beta: torch.Tensor, lam: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """sqrt(lambda_max(E_next)) of the block for fixed multipliers (per unit rho^2) on the ``live`` neurons.

    ``shortcut`` S (n_out x n), ``inner`` W (m x n), ``outer`` G (n_out x m), ``alpha``/``beta`` (m,)
    slopes, ``lam`` (number of live neurons,) multipliers, ``live`` (m,) bool mask; output units per
    input unit.  Differentiable in S, W and G; raises :class:`InfeasibleCertificateError` when M
    fails Cholesky (the multipliers no longer fit the weights).
    """
    if lam.shape != (int(live.sum()),):
        raise ShapeMismatchError(f"lam must hold one multiplier per live neuron ({int(live.sum())}), "
                                 f"got shape {tuple(lam.shape)}")
    s = shortcut + outer @ (alpha[:, None] * inner)
    v = (beta - alpha)[live, None] * inner[live]
    g = outer[:, live]
    lam = lam.to(inner)
    m = torch.diag(2 * lam) - lam[:, None] * (v @ v.T) * lam[None, :]
    low, info = torch.linalg.cholesky_ex((m + m.T) / 2)
    if int(info) != 0:
        raise InfeasibleCertificateError("2 Lambda - Lambda V V^T Lambda is not positive definite for these "
                                         "multipliers")
    k = (s @ v.T) * lam[None, :] + g
    y = torch.linalg.solve_triangular(low, k.T, upper=False)  # L^{-1} K^T, so K M^{-1} K^T = y^T y
    form = s @ s.T + y.T @ y
    return torch.linalg.eigvalsh((form + form.T) / 2)[-1].clamp_min(0).sqrt()


def naive_value(shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                beta: torch.Tensor) -> torch.Tensor:
    """||S|| + ||G|| ||W|| max_i max(|alpha_i|, |beta_i|) (spectral norms by SVD), differentiable."""
    slope = torch.maximum(alpha.abs(), beta.abs()).max()
    norm = lambda a: torch.linalg.matrix_norm(a, ord=2)  # noqa: E731
    return norm(shortcut) + norm(outer) * norm(inner) * slope


class BlockCertificate:
    """The differentiable block bound with multipliers from :func:`block_constant`, refreshed every ``every`` calls.

    Between refreshes the last multipliers are reused (still a valid choice while M stays positive
    definite); a call where they no longer fit refreshes them at once.  When block_constant's best
    value is the naive one (no multipliers), :func:`naive_value` is used until the next refresh.
    ``refreshes`` counts the calls of block_constant.
    """

    def __init__(self, every: int = 1, method: str = "combined") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.method = every, method
        self.calls = self.refreshes = 0
        self.state: tuple[torch.Tensor, torch.Tensor, bool] | None = None  # (lam per rho^2, live, relaxed); None: naive

    def refresh(self, shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                beta: torch.Tensor) -> None:
        """Multipliers (per unit rho^2) and live neurons of block_constant's best certificate on these weights."""
        self.refreshes += 1
        found = block_constant(shortcut.detach(), inner.detach(), outer.detach(), alpha, beta, method=self.method)
        if found.multipliers is None:
            self.state = None
            return
        live = found.multipliers > 0
        self.state = (found.multipliers[live] / found.extras["raw"] ** 2, live, found.extras["slopes"] == "relaxed")

    def __call__(self, shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
                 beta: torch.Tensor) -> torch.Tensor:
        """Differentiable bound on Lip_2 of S x + G sigma(W x + b) (float64 0-d tensor)."""
        if self.calls % self.every == 0:
            self.refresh(shortcut, inner, outer, alpha, beta)
        self.calls += 1
        if self.state is not None:
            try:
                return self._value(shortcut, inner, outer, alpha, beta)
            except InfeasibleCertificateError:
                self.refresh(shortcut, inner, outer, alpha, beta)
        if self.state is None:
            return naive_value(shortcut, inner, outer, alpha, beta)
        return self._value(shortcut, inner, outer, alpha, beta)

    def _value(self, shortcut: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, alpha: torch.Tensor,
               beta: torch.Tensor) -> torch.Tensor:
        """:func:`block_value` with the held multipliers (slopes relaxed as block_constant's winner had them)."""
        assert self.state is not None
        lam, live, relaxed = self.state
        if relaxed:  # block_form.canonical's relaxation: [alpha, beta] widened to [0, beta] where 0 <= alpha < beta
            alpha = torch.where((alpha >= 0) & (alpha < beta), torch.zeros_like(alpha), alpha)
        return block_value(shortcut, inner, outer, alpha, beta, lam, live)
