"""Residual-block certificates (lipcert/bounds/residual_block.py, block_form.py; docs/decisions.md 30, 31)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.activations import get_activation
from lipcert.bounds import block_form as bf
from lipcert.bounds.block_lower import chain_jacobian_bound, chain_pattern_bound
from lipcert.bounds.closed_form import single_rule
from lipcert.bounds.residual_block import (BlockBound, ResidualBlock, block_constant, branch_chain, chain_constant,
                                           multiplier_value)
from lipcert.bounds.rules import Rule
from lipcert.errors import (InfeasibleCertificateError, InvalidSlopeError, NonFiniteWeightsError,
                            ShapeMismatchError, UnknownMethodError)
from lipcert.rounding import INFLATION

ACTIVATIONS = ("relu", "tanh", "leaky_relu(0.1)", "sigmoid", "silu", "gelu", "abs")


def sll_block(m: int, n: int, gen: torch.Generator, nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Araujo et al. 2023: h(x) = x - 2 W T^{-1} relu(W^T x + b), T_ii = sum_j |W^T W|_ij q_j / q_i.

    Returns (inner, outer) = (W^T, -2 W T^{-1}) in block_constant's orientation."""
    inner = torch.randn(m, n, generator=gen, dtype=torch.float64)
    if nonnegative:  # T - inner inner^T is then singular (a weighted Laplacian): the optimum is on the boundary
        inner = inner.abs()
    q = torch.rand(m, generator=gen, dtype=torch.float64) + 0.5
    t = ((inner @ inner.T).abs() * q[None, :]).sum(dim=1) / q
    return inner, -2 * inner.T / t[None, :]


def resnet_block(n: int, m: int, gen: torch.Generator, shortcut: bool) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                                  torch.Tensor]:
    """He-scaled W (m x n) and G (n x m), and S = I (None) or a random 1x1 map."""
    s = torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n) if shortcut else None
    w = torch.randn(m, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n)
    g = torch.randn(n, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m)
    return s, w, g


def lmi_min_eigenvalue(s: torch.Tensor, w: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                       rho: float, lam: torch.Tensor) -> float:
    """lambda_min of the block LMI (module docstring of residual_block), scaled by its diagonal (a congruence)."""
    top_left = (rho**2 * torch.eye(w.shape[1], dtype=torch.float64) - s.T @ s
                + 2 * w.T @ ((lam * alpha * beta)[:, None] * w))
    off = -(s.T @ g + w.T @ torch.diag(lam * (alpha + beta)))
    q = torch.cat([torch.cat([top_left, off], 1), torch.cat([off.T, torch.diag(2 * lam) - g.T @ g], 1)], 0)
    d = torch.diagonal(q).clamp(min=1e-300).rsqrt()
    return float(torch.linalg.eigvalsh(d[:, None] * q * d[None, :])[0])


@pytest.mark.parametrize("m,n", [(1, 5), (2, 5), (3, 4), (16, 8), (48, 24), (12, 30)])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_sll_blocks_are_bounded_at_exactly_one(m: int, n: int, nonnegative: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    inner, outer = sll_block(m, n, gen, nonnegative)
    bound = block_constant(None, inner, outer, torch.tensor(0.0), torch.tensor(1.0))
    assert abs(bound.extras["raw"] - 1) <= 1e-9, (seed, bound.rule, bound.extras["raw"])
    assert 1 <= bound.value <= (1 + 1e-9) * (1 + INFLATION), (seed, bound.value)


@pytest.mark.skipif(importlib.util.find_spec("orthogonium") is None, reason="orthogonium is not installed")
def test_orthogonium_sll_dense_layer_is_bounded_at_one(seed: int) -> None:
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense

    torch.manual_seed(seed)
    layer = SDPBasedLipschitzDense(12, 12, 24).double()
    with torch.no_grad():
        layer.q.normal_()
        inner, t = layer.weight.detach().clone(), layer.compute_t().detach()
        outer = -2 * inner.T * t[None, :]
        x = torch.randn(5, 12, dtype=torch.float64)
        mine = x + torch.relu(x @ inner.T + layer.bias) @ outer.T
        assert torch.allclose(layer(x), mine, atol=1e-12)
    bound = block_constant(None, inner, outer, torch.tensor(0.0), torch.tensor(1.0))
    assert abs(bound.extras["raw"] - 1) <= 1e-9, (seed, bound.rule, bound.extras["raw"])


@pytest.mark.skipif(importlib.util.find_spec("orthogonium") is None, reason="orthogonium is not installed")
def test_orthogonium_sll_conv_block_is_bounded_at_one(seed: int) -> None:
    """x - 2 conv_transpose(relu(conv(x) + b)) with an AOL kernel, as dense matrices on a 5 x 5 grid."""
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

    torch.manual_seed(seed)
    block = SDPBasedLipschitzResBlock(2, 2, kernel_size=3).double()
    n = 2 * 5 * 5
    with torch.no_grad():
        kernel = block.kernel.detach().clone()
        m = kernel.shape[0] * 25
        inner = F.conv2d(torch.eye(n, dtype=torch.float64).reshape(n, 2, 5, 5), kernel, padding=1).reshape(n, m).T
        outer = -2 * F.conv_transpose2d(torch.eye(m, dtype=torch.float64).reshape(m, -1, 5, 5), kernel,
                                        padding=1).reshape(m, n).T
        bias = block.bias.detach().reshape(-1, 1, 1).expand(-1, 5, 5).reshape(-1)
        x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
        mine = x.reshape(3, n) + torch.relu(x.reshape(3, n) @ inner.T + bias) @ outer.T
        assert torch.allclose(block(x).reshape(3, n), mine, atol=1e-12)
    bound = block_constant(None, inner, outer, torch.tensor(0.0), torch.tensor(1.0))
    assert abs(bound.extras["raw"] - 1) <= 1e-9, (seed, bound.rule, bound.extras["raw"])


def test_zero_shortcut_is_theorem_1(seed: int) -> None:
    """S = 0 gives the chain W, G: the same Gamma and M, so SN(1) and GC(1.99) agree with the chain recursion
    (a single-rule block method keeps the lesser of its rule and the SN(1) fallback, so the chain's too)."""
    gen = torch.Generator().manual_seed(seed)
    _, w, g = resnet_block(10, 20, gen, False)
    slopes = [(torch.zeros(20, dtype=torch.float64), torch.ones(20, dtype=torch.float64))]
    fallback = single_rule([w, g], slopes, Rule("sn", 1.0)).value
    for rule in (Rule("sn", 1.0), Rule("gc", 1.99)):
        mine = block_constant(torch.zeros(10, 10, dtype=torch.float64), w, g, torch.tensor(0.0), torch.tensor(1.0),
                              method=rule.name)
        chain = min(single_rule([w, g], slopes, rule).value, fallback)
        assert mine.value == pytest.approx(chain, rel=1e-10), (seed, rule.name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shortcut", [False, True])
def test_block_values_are_sound_and_below_naive(activation: str, shortcut: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    act = get_activation(activation)
    alpha, beta = torch.tensor(act.alpha), torch.tensor(act.beta)
    for n, m in ((6, 12), (12, 6)):
        s, w, g = resnet_block(n, m, gen, shortcut)
        bias = torch.randn(m, generator=gen, dtype=torch.float64)
        block = ResidualBlock(s, w, g, alpha, beta)
        assert act.fn is not None and act.derivative is not None
        lower = max(chain_pattern_bound([block], generator=gen),
                    chain_jacobian_bound([block], [bias], [(act.fn, act.derivative)], generator=gen))
        combined = block_constant(s, w, g, alpha, beta)
        optimized = block_constant(s, w, g, alpha, beta, method="optimized")
        naive = combined.per_rule["naive"]
        where = (seed, activation, n, m)
        assert lower <= optimized.value * (1 + 1e-9), where
        assert optimized.value <= combined.value * (1 + 1e-12) and combined.value < naive, where
        assert combined.value == pytest.approx(min(combined.per_rule.values()), rel=1e-12), where
        for bound in (combined, optimized):  # the certificate itself: the block LMI at (value, multipliers)
            assert bound.multipliers is not None
            a = torch.zeros_like(bound.multipliers) if bound.extras["slopes"] == "relaxed" and act.alpha > 0 else alpha
            sm = torch.eye(n, dtype=torch.float64) if s is None else s
            alphas, betas = a * torch.ones(m, dtype=torch.float64), beta * torch.ones(m, dtype=torch.float64)
            assert lmi_min_eigenvalue(sm, w, g, alphas, betas, bound.value, bound.multipliers) >= -1e-9, where
            assert multiplier_value(sm, w, g, alphas, betas, bound.multipliers) <= bound.value * (1 + 1e-7), where


def test_downsampling_shortcut(seed: int) -> None:
    """A rectangular shortcut (n_out != n), as a strided 1x1 conv gives: sound, certified, below naive."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 7, generator=gen, dtype=torch.float64) / math.sqrt(7)
    w = torch.randn(9, 7, generator=gen, dtype=torch.float64) * math.sqrt(2 / 7)
    g = torch.randn(4, 9, generator=gen, dtype=torch.float64) * math.sqrt(2 / 9)
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    bound = block_constant(s, w, g, zero, one)
    assert bound.multipliers is not None and bound.extras["form"].shape == (4, 4)
    lower = chain_pattern_bound([ResidualBlock(s, w, g, zero, one)], generator=gen)
    assert lower <= bound.value < bound.per_rule["naive"], seed
    ones = torch.ones(9, dtype=torch.float64)
    assert lmi_min_eigenvalue(s, w, g, 0 * ones, ones, bound.value, bound.multipliers) >= -1e-9, seed


def test_sdp_is_below_every_closed_form_and_above_the_lower_bound(seed: int) -> None:
    pytest.importorskip("cvxpy")
    from lipcert.bounds.block_sdp import block_sdp

    gen = torch.Generator().manual_seed(seed)
    for activation in ("relu", "silu"):
        act = get_activation(activation)
        s, w, g = resnet_block(6, 10, gen, True)
        alpha, beta = torch.tensor(act.alpha), torch.tensor(act.beta)
        sdp = block_sdp(s, w, g, alpha, beta, solver="CLARABEL")
        combined = block_constant(s, w, g, alpha, beta)
        lower = chain_pattern_bound([ResidualBlock(s, w, g, alpha, beta)], generator=gen)
        assert sdp.rule == "sdp", (seed, sdp.extras["solver_status"])
        assert lower <= sdp.value * (1 + 1e-9) and sdp.value <= combined.value * (1 + 1e-6), (seed, activation)
        assert sdp.value == pytest.approx(sdp.extras["solver_value"], rel=1e-4), (seed, activation)


def test_infeasible_multipliers_are_reported(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    _, w, g = resnet_block(8, 8, gen, False)
    small = 0.25 * torch.diagonal(g.T @ g)  # 2 Lambda - G^T G has a negative diagonal
    with pytest.raises(InfeasibleCertificateError, match="not positive definite"):
        multiplier_value(None, w, g, torch.tensor(0.0), torch.tensor(1.0), small)
    st = bf.stage(bf.canonical(torch.eye(8, dtype=torch.float64), w, g, torch.zeros(8, dtype=torch.float64),
                               torch.ones(8, dtype=torch.float64)))
    too_big = 3 / torch.diagonal(st.gamma)  # 2 Lambda^-1 - Gamma has a negative diagonal
    assert bf.next_form(st, too_big) is None
    with pytest.raises(InfeasibleCertificateError):
        bf.choose(st, iter([("too big", too_big)]))


def test_chain_recursion_is_sound_and_not_above_the_product(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    act = get_activation("relu")
    blocks, biases = [], []
    for k in range(3):
        s, w, g = resnet_block(6, 9, gen, k == 1)
        blocks.append(ResidualBlock(s, w, 0.5 * g, torch.tensor(0.0), torch.tensor(1.0)))
        biases.append(torch.randn(9, generator=gen, dtype=torch.float64))
    head = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    bound = chain_constant(blocks, head)
    product = math.prod(block_constant(b.shortcut, b.inner, b.outer, b.alpha, b.beta).value for b in blocks)
    assert bound.per_rule["product"] >= product and bound.value <= bound.per_rule["product"], seed
    headed = [*blocks, ResidualBlock(torch.zeros(3, 6, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64),
                                     torch.zeros(3, 1, dtype=torch.float64), torch.tensor(0.0), torch.tensor(1.0))]
    headed[-1] = ResidualBlock(head, headed[-1].inner, headed[-1].outer, headed[-1].alpha, headed[-1].beta)
    assert act.fn is not None and act.derivative is not None
    lower = max(chain_pattern_bound(headed, generator=gen),
                chain_jacobian_bound(headed, [*biases, torch.zeros(1, dtype=torch.float64)],
                                     [(act.fn, act.derivative)] * 4, generator=gen))
    assert lower <= bound.value * (1 + 1e-9), seed
    margins = bound.pairwise()  # margin constants: above every sampled |(e_i - e_j)^T head J(x) u| ...
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    jac = torch.eye(6, dtype=torch.float64).expand(64, 6, 6)
    for b, bias in zip(blocks, biases):
        s = torch.eye(6, dtype=torch.float64) if b.shortcut is None else b.shortcut
        z = x @ b.inner.T + bias
        jac = (s + (b.outer * (z > 0).double()[:, None, :]) @ b.inner) @ jac
        x = x @ s.T + torch.relu(z) @ b.outer.T
    for i, j in ((0, 1), (0, 2), (1, 2)):
        rows = (head[i] - head[j]) @ jac
        assert float(rows.norm(dim=1).max()) <= margins[i, j] <= bound.value * 2, (seed, i, j)
        assert margins[i, j] == pytest.approx(bound.along(torch.eye(3, dtype=torch.float64)[i] - torch.eye(3)[j]),
                                              rel=1e-12)
    optimized = chain_constant(blocks, head, method="optimized")
    assert lower <= optimized.value * (1 + 1e-9) and optimized.value <= bound.value * (1 + 1e-12), seed


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_branch_chain_of_one_hidden_layer_is_the_block(activation: str, seed: int) -> None:
    """The state (x, phi) with the head [S, G] gives the block certificate itself (the head scores exactly)."""
    gen = torch.Generator().manual_seed(seed)
    act = get_activation(activation)
    s, w, g = resnet_block(7, 11, gen, True)
    alpha, beta = torch.tensor(act.alpha), torch.tensor(act.beta)
    chained = chain_constant(*branch_chain(s, [w, g], [alpha], [beta]))
    assert chained.value == pytest.approx(block_constant(s, w, g, alpha, beta).value, rel=1e-9), seed


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_bottleneck_and_post_activation_are_sound(activation: str, seed: int) -> None:
    """relu(x + W3 sigma(W2 sigma(W1 x + b1) + b2)) (a ResNet v1 bottleneck): the branch as blocks, the
    activation after the sum as the block (0, I, I); above the pattern and Jacobian bounds, below naive."""
    gen = torch.Generator().manual_seed(seed)
    act = get_activation(activation)
    assert act.fn is not None and act.derivative is not None
    n, m = 5, 8
    ws = [torch.randn(m, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n),
          torch.randn(m, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m),
          torch.randn(n, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m)]
    alpha, beta = torch.tensor(act.alpha), torch.tensor(act.beta)
    blocks, head = branch_chain(None, ws, [alpha, alpha], [beta, beta])
    eye = torch.eye(n, dtype=torch.float64)
    post = ResidualBlock(torch.zeros(n, n, dtype=torch.float64), eye, eye, torch.tensor(0.0), torch.tensor(1.0))
    summed = ResidualBlock(head, torch.zeros(1, head.shape[1], dtype=torch.float64),
                           torch.zeros(n, 1, dtype=torch.float64), alpha, beta)
    bound = chain_constant([*blocks, summed, post])
    bias = [torch.randn(m, generator=gen, dtype=torch.float64) for _ in range(2)]
    x = torch.randn(256, n, generator=gen, dtype=torch.float64)
    z1 = x @ ws[0].T + bias[0]
    z2 = act(z1) @ ws[1].T + bias[1]
    y = x + act(z2) @ ws[2].T
    jac = (act.derivative(y)[:, :, None] * (eye + (ws[2] * act.derivative(z2)[:, None, :])
                                             @ (ws[1] * act.derivative(z1)[:, None, :]) @ ws[0]))
    lower = max(float(torch.linalg.matrix_norm(jac, ord=2).max()),
                chain_pattern_bound([*blocks, summed], generator=gen))
    slope = max(abs(act.alpha), abs(act.beta))
    naive = 1 + slope**2 * math.prod(float(torch.linalg.matrix_norm(w, ord=2)) for w in ws)
    assert lower <= bound.value * (1 + 1e-9) and bound.value < naive, (seed, lower, bound.value, naive)


def test_sll_chain_stays_at_one(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    blocks = [ResidualBlock(None, *sll_block(10, 6, gen), torch.tensor(0.0), torch.tensor(1.0)) for _ in range(3)]
    assert chain_constant(blocks).extras["raw"] <= 1 + 1e-8, seed


def test_linear_and_dead_neurons(seed: int) -> None:
    """alpha = beta neurons fold into the shortcut exactly; zero rows and columns are dropped."""
    gen = torch.Generator().manual_seed(seed)
    s, w, g = resnet_block(5, 4, gen, True)
    assert s is not None
    linear = block_constant(s, w, g, torch.tensor(0.5), torch.tensor(0.5))
    exact = float(torch.linalg.matrix_norm(s + 0.5 * g @ w, ord=2))
    assert linear.value == pytest.approx(exact, rel=1e-7) and linear.value >= exact, seed
    dead = torch.randn(5, 1, generator=gen, dtype=torch.float64)  # its neuron has a zero row of W: constant
    w2, g2 = torch.cat([w, torch.zeros(1, 5, dtype=torch.float64)]), torch.cat([g, dead], 1)
    padded = block_constant(s, w2, g2, torch.tensor(0.0), torch.tensor(1.0))
    assert padded.value == pytest.approx(block_constant(s, w, g, torch.tensor(0.0), torch.tensor(1.0)).value, rel=1e-12)
    assert padded.multipliers is not None and float(padded.multipliers[-1]) == 0.0


def test_bad_input_gets_named_errors() -> None:
    w, g = torch.ones(3, 4, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    with pytest.raises(ShapeMismatchError, match="outer"):
        block_constant(None, w, g.T, zero, one)
    with pytest.raises(ShapeMismatchError, match="shortcut"):
        block_constant(torch.eye(3), w, g, zero, one)
    with pytest.raises(NonFiniteWeightsError, match="inner"):
        block_constant(None, w * math.nan, g, zero, one)
    with pytest.raises(InvalidSlopeError, match="alpha > beta"):
        block_constant(None, w, g, one, zero)
    with pytest.raises(ShapeMismatchError, match="alpha"):
        block_constant(None, w, g, torch.zeros(2), one)
    with pytest.raises(UnknownMethodError, match="residual-block method"):
        block_constant(None, w, g, zero, one, method="lipsdp")
    with pytest.raises(ShapeMismatchError, match="block 2"):
        chain_constant([ResidualBlock(None, w, g, zero, one), ResidualBlock(None, g, w, zero, one)])
    assert isinstance(block_constant(None, w, g, zero, one, method="naive"), BlockBound)
