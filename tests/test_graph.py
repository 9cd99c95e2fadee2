"""The network graph representation (lipcert/graph.py): residual blocks, merging, evaluation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipcert
from lipcert.errors import GraphNetworkError, ShapeMismatchError
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network


def _branch(rng: np.random.Generator, widths: list[int], act: str = "relu") -> Network:
    ws = [rng.standard_normal((widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    bs = [rng.standard_normal(widths[k + 1]) * 0.1 for k in range(len(widths) - 1)]
    return Network.from_weights(ws, bs, act)


def residual_net(rng: np.random.Generator, act: str = "relu", width: int = 6, blocks: int = 2,
                 n_in: int = 5, n_out: int = 3) -> GraphNetwork:
    """chain(n_in -> width) act [residual(identity + g) act] * blocks, residual(1x1 shortcut) act, chain(-> n_out)."""
    stages: list[Network | Residual] = [_branch(rng, [n_in, width])]
    for _ in range(blocks):
        stages.append(Residual(_branch(rng, [width, width + 2, width], act)))
    stages.append(Residual(_branch(rng, [width, width, width - 2], act),
                           torch.as_tensor(rng.standard_normal((width - 2, width)) / np.sqrt(width)),
                           torch.as_tensor(rng.standard_normal(width - 2) * 0.1)))
    stages.append(_branch(rng, [width - 2, n_out]))
    net = graph_network(stages, [act] * (len(stages) - 1))
    assert isinstance(net, GraphNetwork)
    return net


def _reference(net: GraphNetwork, x: torch.Tensor) -> torch.Tensor:
    """The graph's function written out stage by stage with the chains' own forward passes."""
    z = x
    for t, stage in enumerate(net.stages):
        if isinstance(stage, Network):
            z = stage(z)
        else:
            short = z if stage.shortcut is None else z @ stage.shortcut.T
            z = short + (0 if stage.shortcut_bias is None else stage.shortcut_bias) + stage.branch(z)
        if t < len(net.activations) and net.activations[t] is not None:
            z = net.activations[t](z)
    return z


def test_forward_matches_the_stagewise_reference(rng: np.random.Generator) -> None:
    net = residual_net(rng, "tanh")
    x = torch.as_tensor(rng.standard_normal((7, 5)))
    assert torch.allclose(net(x), _reference(net, x), rtol=0, atol=1e-14)
    assert net(x[0]).shape == (3,)
    assert isinstance(net(x.numpy()), np.ndarray)
    assert net.widths == (5, 6, 6, 6, 4, 3)
    assert net.output_dim == 3 and net.input_dim == 5


def test_linear_residuals_merge_exactly_into_a_chain(rng: np.random.Generator) -> None:
    w1, w2 = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s = rng.standard_normal((4, 6))
    stages = [_branch(rng, [5, 6]),
              Residual(Network.from_weights([w1], [rng.standard_normal(6)])),
              Residual(Network.from_weights([w2])),
              Residual(Network.from_weights([rng.standard_normal((4, 6))]), torch.as_tensor(s)),
              _branch(rng, [4, 5, 3], "relu")]
    merged = graph_network(stages, [None, "relu", None, None], input_shape=(5,))
    assert isinstance(merged, Network)
    # (I + W1) W0 | relu | W4 (S + W3) (I + W2) | relu | W5: every affine run is one matrix
    assert merged.widths == (5, 6, 5, 3)
    x = torch.as_tensor(rng.standard_normal((9, 5)))
    ref = stages[0](x)
    ref = ref + stages[1].branch(ref)
    ref = torch.relu(ref)
    ref = ref + stages[2].branch(ref)
    ref = ref @ torch.as_tensor(s).T + stages[3].branch(ref)
    ref = stages[4](ref)
    assert torch.allclose(merged(x), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))


def test_zero_shortcut_is_the_branch(rng: np.random.Generator) -> None:
    g = _branch(rng, [4, 5, 4])
    net = graph_network([Residual(g, torch.zeros(4, 4), torch.ones(4))])
    assert isinstance(net, Network)
    x = torch.as_tensor(rng.standard_normal((3, 4)))
    assert torch.allclose(net(x), g(x) + 1, atol=1e-14)


def test_fingerprint_tells_graphs_apart(rng: np.random.Generator) -> None:
    net = residual_net(rng)
    assert net.fingerprint() == net.fingerprint()
    g = net.stages[1]
    assert isinstance(g, Residual)
    changed = GraphNetwork(net.stages[:1] + (Residual(g.branch, torch.eye(6) * 1.0),) + net.stages[2:],
                           net.activations, net.input_shape)
    assert changed.fingerprint() != net.fingerprint()  # identity vs. the same matrix spelled out
    other = GraphNetwork(net.stages, (None,) + net.activations[1:], net.input_shape)
    assert other.fingerprint() != net.fingerprint()


def test_bad_graphs_raise_named_errors(rng: np.random.Generator) -> None:
    with pytest.raises(ShapeMismatchError, match="identity shortcut"):
        graph_network([Residual(_branch(rng, [4, 5, 3]))])
    with pytest.raises(ShapeMismatchError, match=r"stage 2 takes 4 inputs but stage 1 has 6"):
        graph_network([_branch(rng, [3, 6]), Residual(_branch(rng, [4, 5, 4]))], ["relu"])
    with pytest.raises(ShapeMismatchError, match=r"shortcut has shape \(3, 3\)"):
        graph_network([Residual(_branch(rng, [4, 5, 3]), torch.zeros(3, 3))])
    with pytest.raises(ShapeMismatchError, match="2 stages need 1 activations between them, got 2"):
        graph_network([_branch(rng, [3, 4]), Residual(_branch(rng, [4, 5, 4]))], ["relu", "relu"])
    with pytest.raises(ShapeMismatchError, match="input shape"):
        graph_network([Residual(_branch(rng, [4, 5, 4]))], input_shape=(5,))


def test_chain_only_verbs_name_the_graph(rng: np.random.Generator) -> None:
    net = residual_net(rng)
    x = rng.random((2, 5))
    with pytest.raises(GraphNetworkError, match="residual blocks"):
        lipcert.combine(net, x, np.zeros(2, dtype=np.int64), eps=[0.1])
