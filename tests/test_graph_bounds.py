"""Bounds, lower bounds and certified radii of network graphs (lipcert/bounds/graph.py, graph_lower.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipcert
from lipcert.attacks import attack, soundness_violations
from lipcert.bounds import lipschitz, lower_bound
from lipcert.bounds.graph import block_lipschitz, shortcut_norm
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network
from lipcert.radii import pairwise_constants

from test_graph import _branch, residual_net

ACTIVATIONS = ["relu", "tanh", "leaky_relu", "sigmoid", "silu", "gelu"]
METHODS = ["naive", "eclipse-fast", "gc", "shift", "combined"]


def _jacobian_rows(net: GraphNetwork, x: torch.Tensor) -> torch.Tensor:
    """Jacobians (B, K, n_0) of the graph at the rows of x, by autograd."""
    return torch.stack([torch.autograd.functional.jacobian(lambda z: net.forward_flat(z[None])[0], xi) for xi in x])


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_method_is_above_the_lower_bounds(act: str, rng: np.random.Generator) -> None:
    net = residual_net(rng, act)
    low = lower_bound(net, restarts=3, samples=32)
    assert low.value > 0 and low.pattern > 0
    bounds = {m: lipschitz(net, m) for m in METHODS}
    bounds["optimized"] = lipschitz(net, "optimized", options={"iterations": 5})
    for name, b in bounds.items():
        assert b.value >= low.value, f"{act} {name}: {b.value} below the lower bound {low.value}"
        assert b.extras["path"] == "graph" and b.network == net.fingerprint()
    assert bounds["combined"].value <= bounds["naive"].value * (1 + 1e-9)
    recursion = bounds["combined"].per_rule["recursion (combined)"]  # the carried form through the graph
    assert bounds["combined"].value == min(bounds["combined"].per_rule.values()) <= recursion
    assert bounds["optimized"].value <= bounds["combined"].value * (1 + 1e-9)
    # margin constants: L_ij >= ||(e_i - e_j)^T J(x)|| at sampled points
    jac = _jacobian_rows(net, torch.as_tensor(rng.standard_normal((16, net.input_dim))))
    for name, b in bounds.items():
        pair = pairwise_constants(b, net)
        diff = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=-1).amax(dim=0).numpy()
        assert np.all(pair >= diff), name
        assert np.all(pair <= np.sqrt(2) * b.value * (1 + 1e-9) + 1e-12)


def _norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w, ord=2))


def _naive_by_hand(chain: Network) -> float:
    slopes = [float(torch.maximum(a.abs(), b.abs()).max()) for a, b in chain.slopes()]
    return float(np.prod([_norm(w) for w in chain.weights]) * np.prod(slopes))


def test_naive_is_the_sum_product_form(rng: np.random.Generator) -> None:
    net = residual_net(rng, "silu")
    expected = 1.0
    for t, stage in enumerate(net.stages):
        if isinstance(stage, Network):
            expected *= _naive_by_hand(stage)
        else:
            expected *= _norm(stage.shortcut_matrix()) + _naive_by_hand(stage.branch)
        if t < len(net.activations):
            expected *= 1.0998393201  # SiLU's slope bound between stages
    got = lipschitz(net, "naive").value
    assert got == pytest.approx(expected, rel=1e-6)
    assert got >= expected


def test_block_lipschitz_is_shortcut_plus_branch(rng: np.random.Generator) -> None:
    g = _branch(rng, [6, 9, 6], "tanh")
    s = torch.as_tensor(rng.standard_normal((6, 6)))
    block = Residual(g, s)
    one = block_lipschitz(block, lambda chain, last: lipschitz(chain, "eclipse-fast"))
    assert one.shortcut == pytest.approx(_norm(s), rel=1e-7) and one.shortcut >= _norm(s)
    assert one.value == pytest.approx(one.shortcut + lipschitz(g, "eclipse-fast").value, rel=1e-12)
    assert shortcut_norm(Residual(g)) == 1.0
    net = graph_network([block])
    assert isinstance(net, GraphNetwork)
    bound = lipschitz(net, "eclipse-fast")
    assert bound.value <= one.value * (1 + 1e-9)  # the Young form never exceeds ||S|| + Lip(g)
    assert bound.value >= lower_bound(net, restarts=2, samples=16).value


def test_certified_radii_of_a_residual_net_survive_pgd(rng: np.random.Generator) -> None:
    while True:  # a net whose prediction changes within radius 50 (with ReLU features one logit can win everywhere)
        net = residual_net(rng, "relu", width=8, n_in=6, n_out=4)
        far = np.asarray(net(rng.random((1, 6)) + 50 * rng.standard_normal((500, 6)) / np.sqrt(6))).argmax(axis=1)
        if len(np.unique(far)) >= 3:
            break
    x = rng.random((60, 6))
    y = np.asarray(net(x)).argmax(axis=1)
    y[:5] = (y[:5] + 1) % 4  # a few misclassified inputs get radius 0
    cert = lipcert.certify(net, x, y, method=["naive", "combined"])
    assert np.all(cert.radii_of("combined") >= cert.radii_of("naive") * (1 - 1e-12))
    assert np.all(cert.radius[:5] == 0) and np.all(cert.radius[5:] > 0)
    result = attack(net, x, y, norm=2, eps=cert.radius * (1 - 1e-9), steps=30, restarts=2)
    assert soundness_violations(cert, result).size == 0
    wide = attack(net, x, y, norm=2, eps=50.0, steps=30, restarts=2)
    assert wide.success[5:].any()  # the attack is not vacuous: it breaks inputs at larger radii


def test_margin_constants_use_the_last_layer_rows(rng: np.random.Generator) -> None:
    net = residual_net(rng, "relu")  # its last stage is one Linear layer W_L
    last = net.stages[-1]
    assert isinstance(last, Network) and last.depth == 1
    bound = lipschitz(net, "eclipse-fast")
    rest = np.prod([s["value"] for s in bound.extras["stages"][:-1]]) * np.prod(bound.extras["between_slopes"])
    w = last.weights[0].numpy()
    rows = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1) * rest
    np.testing.assert_allclose(pairwise_constants(bound, net), rows, rtol=1e-7)
    assert np.all(pairwise_constants(bound, net) >= rows)
    c = rng.standard_normal(net.output_dim)
    assert bound.along(c) == pytest.approx(np.linalg.norm(c @ w) * rest, rel=1e-7)


def test_a_last_residual_block_gives_sound_margin_constants(rng: np.random.Generator) -> None:
    net = graph_network([_branch(rng, [5, 6]), Residual(_branch(rng, [6, 8, 6], "tanh")),
                         Residual(_branch(rng, [6, 7, 4], "tanh"), torch.as_tensor(rng.standard_normal((4, 6))))],
                        ["tanh", "tanh"])
    assert isinstance(net, GraphNetwork)
    jac = _jacobian_rows(net, torch.as_tensor(rng.standard_normal((32, 5))))
    diff = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=-1).amax(dim=0).numpy()
    for method in ("naive", "combined"):
        bound = lipschitz(net, method)
        block = bound.extras["stages"][-1]
        rest = bound.extras["stages"][0]["value"] * bound.extras["stages"][1]["value"] * np.prod(
            bound.extras["between_slopes"])
        assert bound.value <= block["value"] * rest * (1 + 1e-9)  # Young's form: never above ||S|| + Lip(g)
        assert np.all(pairwise_constants(bound, net) >= diff)
        assert bound.value >= float(torch.linalg.matrix_norm(jac, 2).max())


def test_rounding_bound_holds_against_exact_arithmetic(rng: np.random.Generator) -> None:
    """float64 logits of a small ReLU graph against the same graph in exact rational arithmetic."""
    from fractions import Fraction

    from lipcert.graph_rounding import error_plan, forward_error

    net = residual_net(rng, "relu", width=4, blocks=1, n_in=3, n_out=2)
    x = torch.as_tensor(rng.standard_normal((5, 3)) * 10)
    logits, err = forward_error(error_plan(net), x)

    def affine(w: torch.Tensor, b: torch.Tensor | None, z: list[Fraction]) -> list[Fraction]:
        rows = [sum((Fraction(float(w[i, j])) * z[j] for j in range(len(z))), Fraction(0)) for i in range(w.shape[0])]
        return rows if b is None else [r + Fraction(float(v)) for r, v in zip(rows, b)]

    def chain(c: Network, z: list[Fraction]) -> list[Fraction]:
        for k, (w, b) in enumerate(zip(c.weights, c.biases)):
            z = affine(w, b, z)
            if k < len(c.activations):
                z = [max(v, Fraction(0)) for v in z]
        return z

    for row in range(x.shape[0]):
        z = [Fraction(float(v)) for v in x[row]]
        for t, stage in enumerate(net.stages):
            if isinstance(stage, Network):
                z = chain(stage, z)
            else:
                short = z if stage.shortcut is None else affine(stage.shortcut, stage.shortcut_bias, z)
                z = [a + b for a, b in zip(short, chain(stage.branch, z))]
            if t < len(net.activations):
                z = [max(v, Fraction(0)) for v in z]
        gap = max(abs(Fraction(float(v)) - e) for v, e in zip(logits[row], z))
        assert 0 < float(err[row]) and gap <= Fraction(float(err[row]))


def test_sll_blocks_in_a_graph_are_bounded_at_one(rng: np.random.Generator) -> None:
    """SLL blocks (Araujo et al. 2023) h(x) = x - 2 K^T T^{-1} relu(K x + b), T_ii = sum_k |K K^T|_ik q_k / q_i,
    are 1-Lipschitz by construction; the block certificate finds 1 where ||S|| + Lip(g) cannot."""
    blocks = []
    for _ in range(3):
        k, q = rng.standard_normal((12, 8)), np.exp(rng.standard_normal(12))
        t = (np.abs(k @ k.T) * q[None, :] / q[:, None]).sum(axis=1)
        blocks.append(Residual(Network.from_weights([k, -2 * k.T / t], [rng.standard_normal(12), None], "relu")))
    net = graph_network(blocks, [None, None])
    combined, naive = lipschitz(net, "combined"), lipschitz(net, "naive")
    assert 1.0 <= combined.value <= 1 + 1e-6
    assert [s["certificate"] for s in combined.extras["stages"]] != [None] * 3
    assert naive.value > 1.5
    assert lower_bound(net, restarts=2, samples=16).value <= combined.value
    assert np.all(pairwise_constants(combined, net) <= 2 * combined.value)
