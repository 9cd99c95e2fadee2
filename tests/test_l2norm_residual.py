"""orthogonium's L2NormResidual, sqrt(x^2/2 + fn(x)^2/2 + eps), as a graph stage bounded by sqrt((1 + Lip(fn)^2) / 2).

docs/decisions.md 44: per entry the merge is 1/sqrt(2)-Lipschitz in (x_i, fn(x)_i) jointly, so the stage is
sqrt((1 + L^2) / 2)-Lipschitz for L >= Lip(fn), and fn = L x (eps -> 0) attains it.
"""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import lipcert
from _graphs import METHODS, check_cut_graph_bounds, export_onnx
from lipcert.adapters.onnx import from_onnx
from lipcert.adapters.rebuild import to_torch
from lipcert.attacks import attack, soundness_violations
from lipcert.bounds import lipschitz, lower_bound
from lipcert.errors import GraphNetworkError, UnsupportedOperatorError
from lipcert.graph import GraphNetwork, graph_network
from lipcert.network import Network
from lipcert.norm_residual import NormResidual
from lipcert.rounding import INFLATION

residual = pytest.importorskip("orthogonium.layers.residual")



def _mlp(n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), act(), nn.Linear(hidden, n_out))


class Conv(nn.Module):
    """Conv -> ReLU -> L2NormResidual(conv, ReLU, conv) -> Flatten -> Linear on 2 x 5 x 5 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.block = residual.L2NormResidual(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                                           nn.Conv2d(4, 3, 3, padding=1)), eps=1e-4)
        self.head = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))).flatten(1))


MODELS = {  # name: (factory, input shape)
    "dense relu": (lambda: nn.Sequential(nn.Linear(6, 8), residual.L2NormResidual(_mlp(8, 10, 8)), nn.Linear(8, 3)),
                   (6,)),
    "dense tanh, two blocks": (lambda: nn.Sequential(nn.Linear(6, 8), residual.L2NormResidual(_mlp(8, 8, 8, nn.Tanh)),
                                                     nn.Tanh(), residual.L2NormResidual(_mlp(8, 6, 8, nn.Tanh)),
                                                     nn.Linear(8, 3)), (6,)),
    "conv": (Conv, (2, 5, 5)),
}


@pytest.mark.parametrize("lip", [0.3, 1.0, 2.5])
def test_the_stage_alone_is_bounded_at_its_constant(lip: float, rng: np.random.Generator) -> None:
    n = 5
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    g = Network.from_weights([torch.as_tensor(lip * q)])  # Lip(g) = lip exactly
    net = graph_network([NormResidual(g, 0.0)])
    assert isinstance(net, GraphNetwork)
    exact = np.sqrt((1 + lip**2) / 2)
    certified = np.sqrt((1 + (lip * (1 + INFLATION)) ** 2) / 2) * (1 + INFLATION)  # g's bound, then the stage's
    for method in METHODS + ["optimized"]:
        value = lipschitz(net, method).value
        assert value >= exact and abs(value - certified) <= 1e-9 * exact, method
    # x = t v against 0 with v along g's top direction attains it (eps = 0): the constant is exact
    x = torch.as_tensor(rng.standard_normal((1, n)))
    assert abs(float(net.forward_flat(x).norm() / x.norm()) - exact) <= 1e-12
    assert lower_bound(net, restarts=2, samples=16).value >= exact * (1 - 1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_models_load_match_and_every_bound_is_above_the_lower_bounds(name: str, rng: np.random.Generator) -> None:
    factory, shape = MODELS[name]
    model = factory().double().eval()
    net = lipcert.load(model, input_shape=shape)
    assert isinstance(net, GraphNetwork) and any(isinstance(s, NormResidual) for s in net.stages)
    x = rng.standard_normal((8, *shape))
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=0, atol=1e-12)
    check_cut_graph_bounds(net, name, "l2residual", rng)


def test_certified_radii_survive_pgd_and_the_rounding_bound_holds(rng: np.random.Generator) -> None:
    from lipcert.graph_rounding import error_plan, forward_error

    model = MODELS["dense relu"][0]().double().eval()
    net = lipcert.load(model, input_shape=(6,))
    x = rng.standard_normal((30, 6))
    y = np.asarray(net(x)).argmax(axis=1)
    cert = lipcert.certify(net, x, y, method="combined")
    assert np.all(cert.radius > 0)
    result = attack(net, x, y, norm=2, eps=cert.radius * (1 - 1e-9), steps=30, restarts=2)
    assert soundness_violations(cert, result).size == 0
    with pytest.raises(GraphNetworkError, match="local radii"):
        lipcert.certify(net, x[:2], y[:2], method="naive", local=True)
    xs = torch.as_tensor(rng.standard_normal((4, 6)) * 10)
    logits, err = forward_error(error_plan(net), xs)
    z = xs.numpy().astype(np.longdouble)
    for stage in net.stages:
        chain = stage.branch if isinstance(stage, NormResidual) else stage
        h = z
        for k, (w, b) in enumerate(zip(chain.weights, chain.biases)):
            h = h @ w.numpy().astype(np.longdouble).T + b.numpy().astype(np.longdouble)
            h = np.maximum(h, 0) if k < len(chain.activations) else h
        z = np.sqrt(0.5 * z**2 + 0.5 * h**2 + np.longdouble(stage.eps)) if isinstance(stage, NormResidual) else h
    gap = np.abs(logits.numpy().astype(np.longdouble) - z).max(axis=1)
    assert np.all(gap <= err.numpy().astype(np.longdouble))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_onnx_export_loads_and_matches_onnxruntime(name: str, rng: np.random.Generator) -> None:
    factory, shape = MODELS[name]
    model = factory().double().eval()
    exported = export_onnx(model, shape)
    net = from_onnx(exported)
    assert isinstance(net, GraphNetwork) and any(isinstance(s, NormResidual) for s in net.stages)
    assert any("L2NormResidual merge" in note for note in net.info["notes"])
    x = rng.standard_normal((6, *shape))
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.asarray(session.run(None, {"x": x.astype(np.float32)})[0])
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=0, atol=2e-5)
    a = lipschitz(net, "combined").value
    b = lipschitz(lipcert.load(model, input_shape=shape), "combined").value
    assert abs(a - b) <= 1e-5 * b


def test_what_is_refused_names_the_stage() -> None:
    model = MODELS["dense relu"][0]().double().eval()
    with pytest.raises(UnsupportedOperatorError, match=r"L2NormResidual node 'l2_norm_merge'.*CROWN"):
        to_torch(model, input_shape=(6,))
    exported = export_onnx(model, (6,))
    half = next(n for n in exported.graph.node if n.name == "/1/Constant_1")  # the 0.5 of x^2 / 2
    half.attribute[0].t.raw_data = np.array(0.25, dtype=np.float32).tobytes()  # x^2 / 4: not the merge
    with pytest.raises(UnsupportedOperatorError, match=r"Pow node '/1/Pow'"):
        from_onnx(exported)
