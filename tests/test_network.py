"""Network representation: construction, validation, normalization and forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipcert
from lipcert.activations import GELU_SLOPES, GELU_TANH_SLOPES, SILU_SLOPES, get_activation
from lipcert.errors import (InvalidSlopeError, LipcertError, NonFiniteWeightsError, ShapeMismatchError,
                            UnknownActivationError)

TORCH_ACTS = {
    "relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "elu": torch.nn.ELU(), "softplus": torch.nn.Softplus(),
    "sigmoid": torch.nn.Sigmoid(), "leaky_relu(0.1)": torch.nn.LeakyReLU(0.1), "silu": torch.nn.SiLU(),
    "gelu": torch.nn.GELU(), "hardtanh": torch.nn.Hardtanh(), "relu6": torch.nn.ReLU6(),
}


@pytest.mark.parametrize("name", sorted(TORCH_ACTS))
def test_forward_matches_torch(name: str, rng: np.random.Generator) -> None:
    layers = [torch.nn.Linear(6, 9), TORCH_ACTS[name], torch.nn.Linear(9, 7), TORCH_ACTS[name], torch.nn.Linear(7, 3)]
    model = torch.nn.Sequential(*layers).double()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    net = lipcert.Network.from_weights([m.weight for m in linears], [m.bias for m in linears], name)
    x = rng.normal(size=(11, 6)) * 3
    expected = model(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(net(x), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(net(torch.as_tensor(x)), torch.Tensor)
    np.testing.assert_allclose(net(x[0]), expected[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,slopes", [("silu", SILU_SLOPES), ("gelu", GELU_SLOPES), ("gelu_tanh", GELU_TANH_SLOPES),
                                         ("sigmoid", (0.0, 0.25)), ("tanh", (0.0, 1.0)), ("elu", (0.0, 1.0)),
                                         ("softplus", (0.0, 1.0))])
def test_slope_bounds_contain_every_derivative(name: str, slopes: tuple[float, float]) -> None:
    act = get_activation(name)
    assert (act.alpha, act.beta) == slopes
    z = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64)
    d = act.derivative(z)
    # Outward rounding: the interval contains every derivative, and is tight to 1e-7.
    assert float(d.min()) >= act.alpha and float(d.max()) <= act.beta
    if name.startswith(("silu", "gelu")):  # negative-slope activations: tight to 1e-7
        assert float(d.min()) - act.alpha < 1e-7 and act.beta - float(d.max()) < 1e-7
    fd = (act(z[1:]) - act(z[:-1])) / (z[1:] - z[:-1])  # secant slopes are inside too
    assert float(fd.min()) >= act.alpha - 1e-9 and float(fd.max()) <= act.beta + 1e-9  # rounding of the quotient


def test_linear_activation_layers_are_merged(rng: np.random.Generator) -> None:
    ws = [rng.normal(size=(5, 4)), rng.normal(size=(6, 5)), rng.normal(size=(3, 6))]
    bs = [rng.normal(size=5), rng.normal(size=6), rng.normal(size=3)]
    net = lipcert.Network.from_weights(ws, bs, ["identity", "relu"])
    assert net.depth == 2 and net.widths == (4, 6, 3)
    x = rng.normal(size=(8, 4))
    h = np.maximum((x @ ws[0].T + bs[0]) @ ws[1].T + bs[1], 0)
    np.testing.assert_allclose(net(x), h @ ws[2].T + bs[2], rtol=1e-12, atol=1e-12)


def test_dead_neurons_are_removed_and_function_kept(rng: np.random.Generator) -> None:
    w1 = rng.normal(size=(6, 4))
    w1[[1, 4]] = 0.0
    b1 = rng.normal(size=6)
    w2, b2 = rng.normal(size=(2, 6)), rng.normal(size=2)
    net = lipcert.Network.from_weights([w1, w2], [b1, b2], "tanh")
    assert net.widths == (4, 4, 2)
    x = rng.normal(size=(5, 4))
    np.testing.assert_allclose(net(x), np.tanh(x @ w1.T + b1) @ w2.T + b2, rtol=1e-12, atol=1e-12)


def test_constant_network_has_constant_zero(rng: np.random.Generator) -> None:
    w1 = np.zeros((5, 3))
    w2 = rng.normal(size=(2, 5))
    net = lipcert.Network.from_weights([w1, w2, rng.normal(size=(4, 2))], [None, rng.normal(size=2), None], "relu")
    assert net.depth == 1
    for method in ("naive", "eclipse-fast", "combined", "greedy"):
        assert lipcert.lipschitz(net, method).value == 0.0
    x = rng.normal(size=(3, 3))
    np.testing.assert_allclose(net(x), np.repeat(net(x[:1]), 3, axis=0))


def test_bad_inputs_raise_named_errors() -> None:
    good = [np.ones((3, 2)), np.ones((1, 3))]
    with pytest.raises(NonFiniteWeightsError, match="weight 2 has 1 non-finite"):
        lipcert.Network.from_weights([np.ones((3, 2)), np.array([[1.0, np.nan, 0.0]])])
    with pytest.raises(NonFiniteWeightsError, match="bias 1"):
        lipcert.Network.from_weights(good, [np.array([np.inf, 0, 0]), None])
    with pytest.raises(ShapeMismatchError, match="weight 2 takes 4 inputs but weight 1 has 3 outputs"):
        lipcert.Network.from_weights([np.ones((3, 2)), np.ones((1, 4))])
    with pytest.raises(ShapeMismatchError, match="bias 2 has shape"):
        lipcert.Network.from_weights(good, [None, np.ones(3)])
    with pytest.raises(ShapeMismatchError, match="needs 1 activations|need 1 activations"):
        lipcert.Network.from_weights(good, None, ["relu", "relu"])
    with pytest.raises(UnknownActivationError, match="unknown activation 'swoosh'"):
        lipcert.Network.from_weights(good, None, "swoosh")
    with pytest.raises(InvalidSlopeError, match="alpha=1.0 > beta=0.5"):
        lipcert.Network.from_weights(good, None, (1.0, 0.5))
    with pytest.raises(ShapeMismatchError, match="2-D"):
        lipcert.Network.from_weights([np.ones(3)])
    with pytest.raises(ShapeMismatchError, match="input shape"):
        lipcert.Network.from_weights(good, input_shape=(3,))
    net = lipcert.Network.from_weights(good)
    with pytest.raises(ShapeMismatchError, match=r"expected inputs of shape \(B, 2\)"):
        net(np.ones((4, 3)))
    slope_only = lipcert.Network.from_weights(good, None, (-0.1, 1.1))
    with pytest.raises(UnknownActivationError, match="cannot be evaluated"):
        slope_only(np.ones((1, 2)))
    assert issubclass(NonFiniteWeightsError, LipcertError) and issubclass(NonFiniteWeightsError, ValueError)


def test_activation_names_and_parameters() -> None:
    assert get_activation("leaky_relu(0.2)").alpha == 0.2
    assert get_activation("LeakyReLU(0.2)").beta == 1.0
    assert (get_activation("elu(2)").alpha, get_activation("elu(2)").beta) == (0.0, 2.0)
    assert get_activation((-0.5, 2.0)).name == "slope[-0.5,2]"
    assert get_activation("swish").name == "silu"
    with pytest.raises(UnknownActivationError, match="parameters"):
        get_activation("relu(3)")


def test_activations_and_networks_pickle_by_reference() -> None:
    """Dask sends networks to workers: every activation pickles as what rebuilds it (never its lambdas,
    which by value dragged module globals along and overflowed a communication thread's stack)."""
    import pickle

    from lipcert.activations import KNOWN_ACTIVATIONS, abs_or_identity, get_activation, slopes_only

    acts = [get_activation(n) for n in KNOWN_ACTIVATIONS] + [
        get_activation(s) for s in ("leaky_relu(0.1)", "elu(0.5)", "softplus(2)", "hardtanh(-2,3)")] + [
        abs_or_identity([True, False, True]), slopes_only(-0.5, 2.0)]
    z = torch.linspace(-3, 3, 21, dtype=torch.float64).reshape(7, 3)
    for act in acts:
        back = pickle.loads(pickle.dumps(act))
        assert (back.name, back.alpha, back.beta, back.mask) == (act.name, act.alpha, act.beta, act.mask)
        if act.fn is not None:
            torch.testing.assert_close(back(z), act(z), rtol=0, atol=0)
    net = lipcert.Network.from_weights([torch.eye(3), 2 * torch.eye(3)], activation="hardtanh(-2,3)")
    assert pickle.loads(pickle.dumps(net)).fingerprint() == net.fingerprint()
