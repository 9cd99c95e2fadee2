"""The look-ahead's pruned search equals the full one (lipcert/bounds/block_form.least_top; docs/decisions.md 39)."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.bounds import block_form as bf
from lipcert.bounds import residual_block as rb
from lipcert.bounds.residual_block import ResidualBlock, chain_constant
from lipcert.errors import InfeasibleCertificateError


def _full(st: bf.Stage, bar: float = math.inf, probe: bf.Probe | None = None) -> float:
    """The search before pruning: every candidate's certified lambda_max(E_next), their least (or ``bar``)."""
    try:
        return min(bar, bf.choose(st).value)
    except InfeasibleCertificateError:
        return bar


def _chain(gen: torch.Generator) -> tuple[list[ResidualBlock], torch.Tensor]:
    """Identity and 1x1-shortcut ReLU / leaky blocks of width 12, an |.| block (0, I, I) between them, a head."""
    n, m = 12, 20
    blocks = []
    for k in range(4):
        s = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n) if k == 2 else None
        w = torch.randn(m, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n)
        g = torch.randn(n, m, generator=gen, dtype=torch.float64) * math.sqrt(0.5 / m)
        blocks.append(ResidualBlock(s, w, g, torch.tensor(0.1 if k == 1 else 0.0), torch.tensor(1.0)))
        if k == 1:  # MaxMin's rewrite: half the neurons |.|, half identity slopes
            eye = torch.eye(n, dtype=torch.float64)
            alpha = torch.cat([-torch.ones(n // 2), torch.ones(n - n // 2)]).double()
            blocks.append(ResidualBlock(torch.zeros(n, n, dtype=torch.float64), eye, eye, alpha, torch.ones(n).double()))
    return blocks, torch.randn(5, n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_pruned_look_ahead_equals_the_full_search(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """chain_constant with pruning equals it with every candidate evaluated (rel 1e-12; seed in the message),
    with fewer certified lambda_max evaluations."""
    print(f"seed {seed}")
    blocks, head = _chain(torch.Generator().manual_seed(seed))
    calls: dict[str, int] = {}
    top = bf.top

    def counted(name: str) -> rb.BlockBound:
        calls[name] = 0

        def count(form: torch.Tensor) -> float:
            calls[name] += 1
            return top(form)
        with monkeypatch.context() as patch:
            patch.setattr(bf, "top", count)
            if name == "full":
                patch.setattr(rb.bf, "least_top", _full)
            return chain_constant(blocks, head)
    fast, full = counted("fast"), counted("full")
    assert fast.value == pytest.approx(full.value, rel=1e-12), (seed, fast.value, full.value)
    assert torch.allclose(fast.extras["form"], full.extras["form"], rtol=1e-12, atol=0), seed
    assert calls["fast"] < calls["full"], (seed, calls)


@pytest.mark.parametrize("seed", range(3))
def test_least_top_is_the_least_candidate_below_the_bar(seed: int) -> None:
    """From a sequence of carried forms (one probe learning along), least_top = min(bar, choose(st).value)."""
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    blocks, _ = _chain(gen)
    canonical = bf.canonical(torch.eye(12, dtype=torch.float64), blocks[0].inner, blocks[0].outer,
                             torch.zeros(20, dtype=torch.float64), torch.ones(20, dtype=torch.float64))
    probe = bf.Probe()
    for step in range(6):
        factor = torch.eye(12, dtype=torch.float64) + 0.3 * torch.randn(12, 12, generator=gen, dtype=torch.float64)
        st = bf.stage(canonical, torch.linalg.cholesky(factor @ factor.T))
        full = bf.choose(st).value
        assert bf.least_top(st, math.inf, probe) == pytest.approx(full, rel=1e-12), (seed, step)
        assert bf.least_top(st, 0.5 * full, probe) == 0.5 * full, (seed, step)
        assert probe.vectors is not None and probe.label is not None
