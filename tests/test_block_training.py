"""The differentiable residual-block certificate for training (lipcert/bounds/block_training.py, decisions 49)."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.bounds.block_lower import chain_pattern_bound
from lipcert.bounds.block_training import BlockCertificate, block_value, naive_value
from lipcert.bounds.residual_block import ResidualBlock, block_constant
from lipcert.errors import InfeasibleCertificateError, ShapeMismatchError
from lipcert.sorting import maxmin_halves_stages


def random_block(kind: str, n: int, m: int, gen: torch.Generator, scale: float = 0.6
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S, W, G, alpha, beta): an identity-shortcut MaxMin block (rewritten as lipcert.sorting does), a ReLU block
    with a linear shortcut, or a leaky-ReLU block (slopes [0.1, 1]) with a linear shortcut."""
    w = torch.randn(m, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    g = scale * torch.randn(n, m, generator=gen, dtype=torch.float64) / math.sqrt(m)
    if kind == "maxmin":
        stage = maxmin_halves_stages(m)[0]
        alpha = torch.where(torch.tensor(stage.mask), -1.0, 1.0).double()
        return torch.eye(n, dtype=torch.float64), stage.to @ w, g @ stage.back, alpha, torch.ones(m, dtype=torch.float64)
    s = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    low = 0.0 if kind == "relu" else 0.1
    return s, w, g, torch.full((m,), low, dtype=torch.float64), torch.ones(m, dtype=torch.float64)


KINDS = ("maxmin", "relu", "leaky")


@pytest.mark.parametrize("kind", KINDS)
def test_value_with_block_constants_multipliers_is_its_raw_bound(kind: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for n, m in ((8, 12), (16, 16), (12, 6)):
        block = random_block(kind, n, m, gen)
        cert = BlockCertificate()
        value = float(cert(*block))
        found = block_constant(*block)
        where = (seed, kind, n, m, found.rule)
        if found.multipliers is None:  # naive won: the naive value, by SVD
            assert value == pytest.approx(found.value, rel=1e-8), where
        else:
            assert value == pytest.approx(found.extras["raw"], rel=1e-9), where
        assert value <= found.value, where
        assert chain_pattern_bound([ResidualBlock(*block)], generator=gen) <= value * (1 + 1e-9), where


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_finite_differences(kind: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    s, w, g, alpha, beta = random_block(kind, 6, 8, gen)
    cert = BlockCertificate()
    cert.refresh(s, w, g, alpha, beta)
    assert cert.state is not None, seed
    lam, live, _ = cert.state
    if kind == "leaky":
        s.requires_grad_(True)
    w.requires_grad_(True)
    g.requires_grad_(True)
    inputs = (s, w, g) if kind == "leaky" else (w, g)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        ss, ww, gg = args if kind == "leaky" else (s.detach(), *args)
        return block_value(ss, ww, gg, alpha, beta, lam, live)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5), seed


def test_stale_multipliers_stay_above_the_lower_bound_and_refresh_when_infeasible(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    s, w, g, alpha, beta = random_block("maxmin", 10, 10, gen)
    cert = BlockCertificate(every=1000)
    cert(s, w, g, alpha, beta)
    for _ in range(5):  # small steps: the held multipliers still certify the moved block
        w = w + 0.01 * torch.randn(w.shape, generator=gen, dtype=torch.float64)
        g = g + 0.01 * torch.randn(g.shape, generator=gen, dtype=torch.float64)
        value = float(cert(s, w, g, alpha, beta))
        lower = chain_pattern_bound([ResidualBlock(s, w, g, alpha, beta)], generator=gen)
        assert lower <= value * (1 + 1e-9), seed
    assert cert.refreshes == 1, seed
    assert cert.state is not None
    with pytest.raises(InfeasibleCertificateError):  # 4x larger weights: M = 2 Lambda - Lambda V V^T Lambda fails
        block_value(s, 2 * w, 2 * g, alpha, beta, *cert.state[:2])
    value = float(cert(s, 2 * w, 2 * g, alpha, beta))
    assert cert.refreshes == 2, seed
    fresh = block_constant(s, 2 * w, 2 * g, alpha, beta)
    assert value == pytest.approx(fresh.extras["raw"] if fresh.multipliers is not None else fresh.value, rel=1e-9)


def test_naive_value_and_errors(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    s, w, g, alpha, beta = random_block("relu", 5, 7, gen)
    assert float(naive_value(s, w, g, alpha, beta)) == pytest.approx(
        block_constant(s, w, g, alpha, beta, method="naive").value, rel=1e-7)
    live = torch.ones(7, dtype=torch.bool)
    with pytest.raises(ShapeMismatchError, match="one multiplier per live neuron"):
        block_value(s, w, g, alpha, beta, torch.ones(6, dtype=torch.float64), live)
    with pytest.raises(ValueError, match="every"):
        BlockCertificate(every=0)
