"""Rigorous lower bounds on the Lipschitz constant of residual blocks and chains of them (math.md 8.3).

* **Pattern bound**: max over slope patterns D (entries alpha_i or beta_i) of ||S + G D W||_2, by
  block-coordinate ascent: with u, v the top singular vectors of the current J, d_i = beta_i where
  (G^T u)_i (W v)_i > 0, else alpha_i.  The block with the linear activations of a pattern lies in the
  slope class, so every upper bound on the class is at least this.  For a chain, one pattern per block.
* **Jacobian bound**: max over sampled x of ||J(x)||_2, J = S + G diag(sigma'(W x + b)) W (chained), with
  the blocks' own biases and activation: a lower bound on this network's own constant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .residual_block import ResidualBlock, _checked

Derivative = Callable[[torch.Tensor], torch.Tensor]


def _jacobian(blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], ds: list[torch.Tensor]) -> torch.Tensor:
    """prod_k (S_k + G_k diag(d_k) W_k), the last block leftmost (batched over leading dimensions of d)."""
    jac = None
    for (s, w, g), d in zip(blocks, ds):
        step = s + (g * d[..., None, :]) @ w
        jac = step if jac is None else step @ jac
    assert jac is not None
    return jac


def chain_pattern_bound(blocks: Sequence[ResidualBlock], *, restarts: int = 8, sweeps: int = 30,
                        generator: torch.Generator | None = None) -> float:
    """Best ||prod_k (S_k + G_k D_k W_k)||_2 over slope patterns found by coordinate ascent (restart 0: all beta)."""
    mats, lows, highs = [], [], []
    for b in blocks:
        s, w, g, alpha, beta = _checked(b.shortcut, b.inner, b.outer, b.alpha, b.beta)
        mats.append((s, w, g))
        lows.append(alpha)
        highs.append(beta)
    best = 0.0
    for rep in range(restarts):
        ds = [h.clone() if rep == 0 else torch.where(torch.rand(len(h), generator=generator, dtype=torch.float64) < 0.5,
                                                      lo, h) for lo, h in zip(lows, highs)]
        value = 0.0
        for _ in range(sweeps):
            changed = False
            for k, (s, w, g) in enumerate(mats):
                right = _jacobian(mats[:k], ds[:k]) if k else torch.eye(s.shape[1], dtype=torch.float64)
                left = (_jacobian(mats[k + 1:], ds[k + 1:]) if k + 1 < len(mats)
                        else torch.eye(s.shape[0], dtype=torch.float64))
                u_, _, vh = torch.linalg.svd(left @ (s + (g * ds[k]) @ w) @ right)
                score = (g.T @ (left.T @ u_[:, 0])) * (w @ (right @ vh[0]))
                new = torch.where(score > 0, highs[k], lows[k])
                changed |= not torch.equal(new, ds[k])
                ds[k] = new
            value = float(torch.linalg.matrix_norm(_jacobian(mats, ds), ord=2))
            if not changed:
                break
        best = max(best, value)
    return best


def chain_jacobian_bound(blocks: Sequence[ResidualBlock], biases: Sequence[torch.Tensor],
                         activations: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], Derivative]], *,
                         samples: int = 256, scale: float = 1.0, generator: torch.Generator | None = None) -> float:
    """max over ``samples`` Gaussian inputs (std ``scale``) of ||J(x)||_2 for the chain with the given biases
    and (activation, derivative) pairs, one per block."""
    mats = [_checked(b.shortcut, b.inner, b.outer, b.alpha, b.beta)[:3] for b in blocks]
    x = scale * torch.randn(samples, mats[0][0].shape[1], generator=generator, dtype=torch.float64)
    ds = []
    for (s, w, g), bias, (fn, prime) in zip(mats, biases, activations):
        z = x @ w.T + bias
        ds.append(prime(z))
        x = x @ s.T + fn(z) @ g.T
    return float(torch.linalg.matrix_norm(_jacobian(mats, ds), ord=2).max())
