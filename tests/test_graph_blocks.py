"""Network graphs through the residual-block recursion (lipcert/bounds/graph_blocks.py; decisions 31)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipcert.bounds import lipschitz, lower_bound
from lipcert.bounds.graph_blocks import graph_blocks, graph_recursion
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.activations import Activation
from lipcert.network import Network

from test_graph import _branch, residual_net


def _jacobians(net: GraphNetwork, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.autograd.functional.jacobian(lambda z: net.forward_flat(z[None])[0], xi) for xi in x])


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid", "silu", "gelu"])
def test_graph_recursion_is_sound(act: str, rng: np.random.Generator) -> None:
    """Above the graph's lower bounds, margins above sampled Jacobian margins, below the graph's naive."""
    net = residual_net(rng, act)
    bound = graph_recursion(net)
    low = lower_bound(net, restarts=3, samples=32)
    assert low.value <= bound.value * (1 + 1e-9), (act, low.value, bound.value)
    assert bound.value < lipschitz(net, "naive").value, act
    jac = _jacobians(net, torch.as_tensor(rng.standard_normal((16, net.input_dim))))
    pair = bound.pairwise()
    diff = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=-1).amax(dim=0).numpy()
    assert np.all(pair >= diff), act


def test_blocks_reproduce_the_graph_on_linear_patterns(rng: np.random.Generator) -> None:
    """With every activation replaced by the identity, the blocks and head compose to the graph's linear map."""
    stages: list[Network | Residual] = [_branch(rng, [4, 6, 5], "relu"), Residual(_branch(rng, [5, 7, 8, 5], "relu")),
                                        Residual(_branch(rng, [5, 6, 3], "relu"),
                                                 torch.as_tensor(rng.standard_normal((3, 5)))),
                                        _branch(rng, [3, 2])]
    net = graph_network(stages, ["relu", None, "relu"])
    assert isinstance(net, GraphNetwork)
    blocks, head = graph_blocks(net)
    lin = torch.eye(4, dtype=torch.float64)
    for b in blocks:
        s = torch.eye(b.inner.shape[1], dtype=torch.float64) if b.shortcut is None else b.shortcut
        lin = (s + b.outer @ b.inner) @ lin
    lin = head @ lin
    def identity(site: int, act: Activation, alpha: torch.Tensor, beta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z

    points = torch.cat([torch.zeros(1, 4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)])
    out = net.forward_flat(points, identity)
    assert torch.allclose(lin, (out[1:] - out[:1]).T, atol=1e-10)
