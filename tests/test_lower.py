"""Lower bounds: the pattern bound against brute force, the Jacobian bound against autograd."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import lipcert
import lipcert.random_nets
from lipcert.bounds.lower import jacobian_bound, pattern_bound


def brute_force_pattern(net: lipcert.Network) -> float:
    best = 0.0
    hidden = [(a.numpy(), b.numpy()) for a, b in net.slopes()]
    sizes = [len(a) for a, _ in hidden]
    for bits in itertools.product((0, 1), repeat=sum(sizes)):
        prod = net.weights[0].numpy()
        pos = 0
        for k, (a, b) in enumerate(hidden):
            d = np.where(np.array(bits[pos:pos + sizes[k]]) == 1, b, a)
            pos += sizes[k]
            prod = net.weights[k + 1].numpy() @ (d[:, None] * prod)
        best = max(best, np.linalg.norm(prod, 2))
    return best


def tiny_net(rng: np.random.Generator, activation: str) -> lipcert.Network:
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(4, 4)), rng.normal(size=(2, 4))]
    return lipcert.Network.from_weights(ws, [rng.normal(size=4), rng.normal(size=4), None], activation)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.2)", "sigmoid", "silu"])
def test_pattern_bound_is_a_lower_bound(activation: str, rng: np.random.Generator) -> None:
    net = tiny_net(rng, activation)
    exact = brute_force_pattern(net)
    assert pattern_bound(net, restarts=8, generator=torch.Generator().manual_seed(1)) <= exact * (1 + 1e-12)
    assert lipcert.lipschitz(net, "combined").value >= exact


@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.2)", "sigmoid", "silu"])
def test_pattern_bound_is_near_the_maximum_on_tiny_nets(activation: str) -> None:
    """A quality claim of a local search, so on fixed nets: 8 restarts found < 0.9 of the maximum on
    0.7 % of random ReLU nets of this size (2 of 300 seeds), which failed the suite once."""
    ratios = []
    for seed in range(20):
        net = tiny_net(np.random.default_rng(seed), activation)
        ratios.append(pattern_bound(net, restarts=8, generator=torch.Generator().manual_seed(1))
                      / brute_force_pattern(net))
    assert min(ratios) >= 0.9 and float(np.median(ratios)) >= 0.99


def test_jacobian_bound_matches_autograd(rng: np.random.Generator) -> None:
    ws = [rng.normal(size=(7, 5)), rng.normal(size=(6, 7)), rng.normal(size=(3, 6))]
    net = lipcert.Network.from_weights(ws, [rng.normal(size=7), rng.normal(size=6), None], "tanh")
    value, point = jacobian_bound(net, samples=32, steps=20, generator=torch.Generator().manual_seed(0))
    assert point is not None
    jac = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], point)
    assert value == pytest.approx(float(torch.linalg.matrix_norm(jac, ord=2)), rel=1e-10)
    assert value <= lipcert.lipschitz(net).value


def test_lower_bound_result(rng: np.random.Generator) -> None:
    net = lipcert.random_nets.gaussian([10, 10, 10, 2], seed=rng, biases=True)
    low = lipcert.lower_bound(net, restarts=3, samples=16)
    assert low.value == max(low.pattern, low.jacobian) > 0 and low.seconds >= 0
    assert low.value <= lipcert.lipschitz(net, "combined").value
    # ReLU: a Jacobian is the product of one activation pattern, so at most the best pattern (brute force).
    # (Not "<= low.pattern": the pattern search is a local ascent and missed a realised pattern on seed 501642431.)
    small = lipcert.random_nets.gaussian([3, 4, 4, 2], seed=rng, biases=True)
    assert lipcert.lower_bound(small, restarts=1, samples=16).jacobian <= brute_force_pattern(small) * (1 + 1e-12)
