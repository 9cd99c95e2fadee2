"""Networks whose conv layers stay operators: forward, fingerprint, densify, matrix-free naive."""

from __future__ import annotations

import pytest
import torch

from lipcert.bounds.lower import lower_bound
from lipcert.bounds.methods import lipschitz
from lipcert.errors import DenseTooLargeError, OperatorLayersError
from lipcert.network import Network
from lipcert.operators import Conv2dOperator

SEED = 1812


def _conv_net(seed: int) -> tuple[Network, torch.nn.Module]:
    """A small conv net (conv s2 - relu - avgpool-as-conv - relu - conv - relu - linear) and its torch twin."""
    gen = torch.Generator().manual_seed(seed)
    k1 = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5
    k3 = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64) * 0.5
    pool = torch.full((4, 1, 2, 2), 0.25, dtype=torch.float64)
    c1 = Conv2dOperator.conv(k1, (2, 10, 10), stride=2, padding=1)
    c2 = Conv2dOperator.conv(pool, c1.output_shape, stride=1, groups=4, padding=(0, 1, 0, 1))
    c3 = Conv2dOperator.conv(k3, c2.output_shape, padding=1, circular=True)
    last = torch.randn(5, c3.shape[0], generator=gen, dtype=torch.float64) * 0.3
    biases = [torch.randn(op.shape[0], generator=gen, dtype=torch.float64) * 0.1 for op in (c1, c2, c3)]
    net = Network.from_weights([c1, c2, c3, last], biases + [None], "relu", input_shape=(2, 10, 10))
    dense = Network.from_weights([c1.dense(), c2.dense(), c3.dense(), last], biases + [None], "relu",
                                 input_shape=(2, 10, 10))
    return net, dense


def test_operator_network_computes_the_dense_function_and_keeps_no_dense_matrix():
    print(f"seed {SEED}")
    net, dense = _conv_net(SEED)
    assert net.has_operators and not dense.has_operators
    assert all(w.device.type == "meta" for w in net.weights[:3])  # placeholders, no memory
    assert net.widths == dense.widths
    x = torch.rand(7, 2, 10, 10, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    torch.testing.assert_close(net(x), dense(x))
    torch.testing.assert_close(net.densified()(x), dense(x))
    assert net.num_parameters < dense.num_parameters


def test_fingerprint_is_stable_for_dense_nets_and_defined_for_operator_nets():
    net, dense = _conv_net(SEED)
    again, _ = _conv_net(SEED)
    other, _ = _conv_net(SEED + 1)
    assert net.fingerprint() == again.fingerprint() != other.fingerprint()
    assert net.fingerprint() != dense.fingerprint()  # a bound records which form it was computed on
    assert dense.fingerprint() == Network.from_weights(list(dense.weights), list(dense.biases), "relu",
                                                       input_shape=(2, 10, 10)).fingerprint()
    # the geometry is part of the fingerprint: the same kernels with circular padding are another network
    ops = [op for op in net.operators if op is not None]
    circular = [Conv2dOperator.conv(ops[0].kernel, ops[0].in_shape, stride=2, padding=1, circular=True),
                *ops[1:], net.weights[3]]
    flipped = Network.from_weights(circular, list(net.biases), "relu", input_shape=(2, 10, 10))
    assert flipped.fingerprint() != net.fingerprint()


def test_matrix_free_naive_is_sound_and_at_most_the_dense_naive_up_to_the_conv_bound():
    net, dense = _conv_net(SEED)
    free = lipschitz(net, "naive")
    assert free.extras["path"] == "matrix-free"
    assert free.network == net.fingerprint()
    ref = lipschitz(dense, "naive")
    # the conv norms are certified upper bounds within 1e-6 of the exact ones on these small grids (dense estimator)
    assert ref.value * (1 - 1e-9) <= free.value <= ref.value * (1 + 1e-6)
    low = lower_bound(dense, samples=64, seed=SEED).value
    assert low <= free.value
    combined = lipschitz(net, "combined")  # circular after zero padding: no common grid, densified (decisions 32)
    assert combined.extras["path"] == "dense" and "no common circular grid" in combined.extras["per_frequency"]
    assert low <= combined.value <= free.value * (1 + 1e-9)


def test_dense_only_verbs_refuse_operator_networks_and_oversized_densification_is_named():
    net, _ = _conv_net(SEED)
    with pytest.raises(OperatorLayersError, match="lower_bound.*densified"):
        lower_bound(net)
    with pytest.raises(DenseTooLargeError, match="GB"):
        net.densified(max_bytes=1000)


def test_torch_conv_layers_convert_to_operators():
    from lipcert.adapters.graph import build_network
    from lipcert.adapters.torch import analyze_module

    print(f"seed {SEED}")
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding="same", padding_mode="circular", groups=2), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 10 * 10, 5)).double().eval()
    conv = analyze_module(model, input_shape=(2, 10, 10))
    net = build_network(conv, operators=True)
    dense = build_network(conv)
    assert [op is not None for op in net.operators] == [True, True, True, False]
    x = torch.rand(4, 2, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(net(x), model(x).detach())
    free, ref = lipschitz(net, "naive"), lipschitz(dense, "naive")
    assert free.extras["path"] == "matrix-free"
    assert ref.value * (1 - 1e-9) <= free.value <= ref.value * 1.05  # conv norms: exact or a frequency bound
    assert lower_bound(dense, samples=64, seed=SEED).value <= free.value


def test_verbs_other_than_lipschitz_name_the_operator_layers():
    import lipcert
    from lipcert.npz import save_npz

    net, _ = _conv_net(SEED)
    x = torch.rand(2, 2, 10, 10, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    with pytest.raises(OperatorLayersError, match=r"certify needs dense weight matrices, but layers \[1, 2, 3\]"):
        lipcert.certify(net, x, torch.tensor([0, 1]))
    with pytest.raises(OperatorLayersError, match="save_npz"):
        save_npz(net, "unused.npz")
    assert lipcert.lipschitz(net, method="naive").extras["path"] == "matrix-free"
