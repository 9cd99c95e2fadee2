"""Networks whose conv layers stay operators: forward, fingerprint, densify, matrix-free naive."""

from __future__ import annotations

import pytest
import torch

from lipcert.bounds.lower import lower_bound
from lipcert.bounds.methods import lipschitz
from lipcert.errors import DenseTooLargeError, MemoryBudgetError
from lipcert.network import Network, require_network
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


def _between_budget(net: Network, method: str = "naive") -> int:
    """A memory budget the matrix-free estimate fits and the dense one does not (it forces the matrix-free path)."""
    from lipcert.bounds.methods import resolve
    from lipcert.bounds.workspace import matrix_free_bytes, method_bytes

    free, dense = matrix_free_bytes(net), method_bytes(net, method, resolve(method).options)
    assert free < dense
    return (free + dense) // 2


def test_matrix_free_naive_is_sound_and_at_most_the_dense_naive_up_to_the_conv_bound():
    net, dense = _conv_net(SEED)
    budget = _between_budget(net)
    free = lipschitz(net, "naive", max_bytes=budget)
    assert free.extras["path"] == "matrix-free" and free.extras["memory_estimate"] <= budget
    assert free.network == net.fingerprint()
    ref = lipschitz(dense, "naive")
    auto = lipschitz(net, "naive")  # the dense form fits the default budget: the dense path, the same value
    assert auto.extras["path"] == "dense" and auto.value == pytest.approx(ref.value, rel=1e-12)
    # the conv norms are certified upper bounds within 1e-6 of the exact ones on these small grids (dense estimator)
    assert ref.value * (1 - 1e-9) <= free.value <= ref.value * (1 + 1e-6)
    low = lower_bound(dense, samples=64, seed=SEED).value
    assert low <= free.value
    combined = lipschitz(net, "combined")  # dense path, densified after the memory check
    assert combined.extras["path"] == "dense" and low <= combined.value <= free.value * (1 + 1e-9)
    with pytest.raises(MemoryBudgetError, match="no matrix-free path.*no common circular grid"):
        lipschitz(net, "combined", max_bytes=budget)  # circular after zero padding: no per-frequency grid


def test_dense_only_verbs_densify_operator_networks_and_oversized_densification_is_named():
    net, dense = _conv_net(SEED)
    assert lower_bound(net, samples=32, seed=SEED).value == pytest.approx(
        lower_bound(dense, samples=32, seed=SEED).value, rel=1e-9)
    with pytest.raises(DenseTooLargeError, match=r"lower_bound needs dense weight matrices, but layers \[1, 2, 3\]"):
        require_network(net, "lower_bound", max_bytes=1000)
    with pytest.raises(DenseTooLargeError, match="GB"):
        net.densified(max_bytes=1000)


def test_torch_conv_layers_load_as_operators_with_normalization_and_batch_norm_folded():
    import lipcert

    print(f"seed {SEED}")
    torch.manual_seed(SEED)
    bn = torch.nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), bn, torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding="same", padding_mode="circular", groups=2), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 10 * 10, 5)).double().eval()
    norm = {"mean": [0.4, 0.5], "std": [0.2, 0.3]}
    net = lipcert.load(model, input_shape=(2, 10, 10), **norm)  # the default: convolutions kept as operators
    dense = lipcert.load(model, input_shape=(2, 10, 10), dense=True, **norm)
    assert [op is not None for op in net.operators] == [True, True, True, False]  # normalization and BN folded
    assert not dense.has_operators and dense.widths == net.widths
    x = torch.rand(4, 2, 10, 10, dtype=torch.float64)
    expected = model((x - torch.tensor([0.4, 0.5]).reshape(1, 2, 1, 1)) / torch.tensor([0.2, 0.3]).reshape(1, 2, 1, 1))
    torch.testing.assert_close(net(x), expected.detach())
    free, ref = lipschitz(net, "naive", max_bytes=_between_budget(net)), lipschitz(dense, "naive")
    assert free.extras["path"] == "matrix-free"
    assert ref.value * (1 - 1e-9) <= free.value <= ref.value * 1.05  # conv norms: exact or a frequency bound
    assert lower_bound(dense, samples=64, seed=SEED).value <= free.value


def test_certify_attack_and_npz_work_on_operator_networks_as_on_their_dense_form(tmp_path):
    import lipcert
    from lipcert.npz import load_npz, save_npz

    net, dense = _conv_net(SEED)
    x = torch.rand(6, 2, 10, 10, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    y = torch.as_tensor(dense(x).argmax(1))
    budget = _between_budget(net)
    ops, ref = lipcert.certify(net, x, y, method="naive", max_bytes=budget), lipcert.certify(dense, x, y, method="naive")
    assert ops.bounds["naive"].extras["path"] == "matrix-free"
    assert (ops.margin == pytest.approx(ref.margin, rel=1e-12)) and (ops.logit_error >= 0).all()
    # matrix-free norms are >= the exact ones and within 1e-6 here: radii at most the dense ones, and close
    assert (ops.radius <= ref.radius * (1 + 1e-9)).all() and ops.radius == pytest.approx(ref.radius, rel=1e-5)
    safe = lipcert.attack(net, x, y, eps=ops.radius, steps=20)  # nothing inside a certified radius
    assert not safe.success.any()
    wide = lipcert.attack(net, x, y, eps=10.0, steps=20)  # the attack itself works on operator layers
    assert wide.success.any()
    save_npz(net, tmp_path / "net.npz")  # the dense matrices (memory-checked)
    torch.testing.assert_close(load_npz(tmp_path / "net.npz")(x), dense(x))


def test_an_operator_layer_weights_entry_refuses_every_computation():
    """torch 2.13 computes ``cpu_tensor @ meta_tensor`` into an uninitialized CPU tensor instead of raising: the
    placeholder of an operator layer must refuse it, and every other computation, by name."""
    from lipcert.errors import OperatorLayersError
    from lipcert.network import OperatorPlaceholder

    op = Conv2dOperator.conv(torch.ones(2, 1, 3, 3, dtype=torch.float64), (1, 5, 5), padding=1)
    net = Network.from_weights([op, torch.ones(3, op.shape[0], dtype=torch.float64)], None, "relu",
                               input_shape=(1, 5, 5))
    w = net.weights[0]
    assert isinstance(w, OperatorPlaceholder) and tuple(w.shape) == tuple(op.shape) and w.dtype == torch.float64
    x = torch.ones(4, op.shape[1], dtype=torch.float64)
    for compute in (lambda: x @ w.T, lambda: w.abs(), lambda: torch.linalg.matrix_norm(w, 2), lambda: w.to("cpu")):
        with pytest.raises(OperatorLayersError, match="operator layer"):
            compute()
