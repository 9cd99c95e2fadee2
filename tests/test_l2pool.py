"""L2-norm pooling (torch LPPool2d p=2, deel-torchlip ScaledL2NormPool2d) as a graph stage with its exact constant.

docs/decisions.md 43: y_w = sqrt(sum_j P_wj x_j^2) is sqrt(max_i c_i)-Lipschitz, c_i the weight with which
input entry i is covered by the windows, and x = t e_i against 0 attains it.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from deel.torchlip import ScaledL2NormPool2d
from onnx import TensorProto, helper
from torch import nn

import lipcert
from _graphs import METHODS, check_cut_graph_bounds, export_onnx
from lipcert.adapters.onnx import from_onnx
from lipcert.adapters.rebuild import to_torch
from lipcert.attacks import attack, soundness_violations
from lipcert.bounds import lipschitz, lower_bound
from lipcert.errors import GraphNetworkError, UnsupportedOperatorError
from lipcert.graph import GraphNetwork, graph_network
from lipcert.norm_pool import window_pool
from lipcert.rounding import INFLATION


def coverage_by_hand(h: int, w: int, k: int, s: int, ho: int, wo: int) -> int:
    """The largest number of windows (k x k, stride s, ho x wo of them) that hold one pixel, by counting."""
    count = np.zeros((h, w), dtype=int)
    for i in range(ho):
        for j in range(wo):
            count[i * s: i * s + k, j * s: j * s + k] += 1
    return int(count.max())


@pytest.mark.parametrize(("k", "s", "n"), [(2, 2, 6), (2, 2, 7), (3, 2, 7), (3, 1, 5), (2, 1, 4), (3, 3, 9)])
def test_the_stage_alone_is_bounded_at_its_exact_constant(k: int, s: int, n: int) -> None:
    module = nn.LPPool2d(2, k, stride=s).double()
    out = module(torch.zeros(1, 2, n, n, dtype=torch.float64))
    ho, wo = out.shape[-2:]
    exact = np.sqrt(coverage_by_hand(n, n, k, s, ho, wo))
    pool = window_pool((2, n, n), (k, k), (s, s), (ho, wo))
    assert abs(pool.constant() - exact) <= 1e-12 * exact
    # x = t e_i against 0 at a most-covered pixel attains it: the constant is exact, not just an upper bound
    i = int(pool.coverage().argmax())
    x = torch.zeros(1, pool.input_dim, dtype=torch.float64)
    x[0, i] = 3.0
    assert abs(float(pool.forward_flat(x).norm()) / 3.0 - exact) <= 1e-12 * exact
    net = graph_network([pool], input_shape=(2, n, n))
    assert isinstance(net, GraphNetwork)
    for method in METHODS + ["optimized"]:
        value = lipschitz(net, method).value
        assert abs(value / (1 + INFLATION) - exact) <= 1e-9 * exact, method
    low = lower_bound(net, restarts=2, samples=16)
    assert exact * (1 - 1e-9) <= low.value <= exact * (1 + 1e-9)


def test_loaded_scaled_pool_alone_is_its_coefficient(seed: int) -> None:
    module = ScaledL2NormPool2d(3, stride=3, k_coef_lip=0.7).double()
    net = lipcert.load(module, input_shape=(2, 6, 6))
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    np.testing.assert_allclose(np.asarray(net(x)), module(x).reshape(5, -1).numpy(), rtol=0, atol=1e-12)
    value = lipschitz(net, "combined").value
    assert abs(value / (1 + INFLATION) ** 2 - 0.7) <= 1e-9  # the pooling's 1 (one inflation), then the 0.7 chain


def pool_model(pool: nn.Module, act: type[nn.Module] = nn.ReLU, n: int = 6) -> nn.Module:
    """Conv -> act -> pool -> Conv -> act -> Flatten -> Linear on 2 x n x n inputs, float64."""
    body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act(), pool, nn.Conv2d(3, 4, 1), act())
    width = body(torch.zeros(1, 2, n, n)).numel()
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(width, 4)).double().eval()


class ResidualThenPool(nn.Module):
    """x + conv(relu(conv(x))), then ReLU, an L2-norm pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.pool = ScaledL2NormPool2d(2)
        self.head = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.head(self.pool(x).flatten(1))


MODELS = {  # name: (model factory, input shape)
    "ScaledL2NormPool2d": (lambda: pool_model(ScaledL2NormPool2d(2)), (2, 6, 6)),
    "ScaledL2NormPool2d k=0.5 tanh": (lambda: pool_model(ScaledL2NormPool2d(2, k_coef_lip=0.5), nn.Tanh), (2, 6, 6)),
    "LPPool2d(2, 3, stride 2)": (lambda: pool_model(nn.LPPool2d(2, 3, stride=2), n=7), (2, 7, 7)),
    "LPPool2d(2, 2, stride 1) gelu": (lambda: pool_model(nn.LPPool2d(2, 2, stride=1), nn.GELU, n=5), (2, 5, 5)),
    "residual then pool": (lambda: ResidualThenPool().double().eval(), (2, 6, 6)),
}


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x.astype(np.float32)})[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_models_load_from_torch_and_onnx_and_match(name: str, rng: np.random.Generator) -> None:
    factory, shape = MODELS[name]
    model = factory()
    net = lipcert.load(model, input_shape=shape)
    assert isinstance(net, GraphNetwork) and len(net.pools()) == 1
    x = rng.standard_normal((8, *shape))
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=0, atol=1e-12)
    onnx_model = export_onnx(model, shape)
    onet = from_onnx(onnx_model)
    assert isinstance(onet, GraphNetwork) and len(onet.pools()) == 1
    assert any("L2-norm pooling" in note for note in onet.info["notes"])
    np.testing.assert_allclose(np.asarray(onet(x)), ort_run(onnx_model, x), rtol=0, atol=2e-5)
    # the same function read two ways has the same bound (up to the float32 weights of the export)
    a, b = lipschitz(net, "combined").value, lipschitz(onet, "combined").value
    assert abs(a - b) <= 1e-5 * a


@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_is_above_the_lower_bounds(name: str, rng: np.random.Generator) -> None:
    factory, shape = MODELS[name]
    model = factory()
    net = lipcert.load(model, input_shape=shape)
    assert isinstance(net, GraphNetwork)
    check_cut_graph_bounds(net, name, "l2pool", rng)


def test_certified_radii_survive_pgd(rng: np.random.Generator) -> None:
    model = MODELS["ScaledL2NormPool2d"][0]()
    net = lipcert.load(model, input_shape=(2, 6, 6), input_range=(0.0, 1.0))
    x = rng.random((30, 2, 6, 6))
    y = np.asarray(net(x)).argmax(axis=1)
    cert = lipcert.certify(net, x, y, method="combined")
    assert np.all(cert.radius > 0)
    result = attack(net, x, y, norm=2, eps=cert.radius * (1 - 1e-9), steps=30, restarts=2)
    assert soundness_violations(cert, result).size == 0
    with pytest.raises(GraphNetworkError, match="L2-norm pooling"):
        lipcert.certify(net, x[:2], y[:2], method="naive", local=True)


def test_rounding_bound_holds_against_extended_precision(rng: np.random.Generator) -> None:
    """The graph's float64 forward error bound against the same pass in numpy's long double."""
    from lipcert.graph_rounding import error_plan, forward_error

    model = MODELS["LPPool2d(2, 3, stride 2)"][0]()
    net = lipcert.load(model, input_shape=(2, 7, 7))
    assert isinstance(net, GraphNetwork)
    x = torch.as_tensor(rng.standard_normal((4, net.input_dim)) * 10)
    logits, err = forward_error(error_plan(net), x)
    z = x.numpy().astype(np.longdouble)
    for t, stage in enumerate(net.densified().stages):  # convolutions kept as operators: the reference is dense
        if hasattr(stage, "index"):
            idx, wt = stage.index.numpy(), stage.weight.numpy().astype(np.longdouble)
            z = np.sqrt((z[:, idx] ** 2 * wt).sum(-1))
        else:
            for k, (w, b) in enumerate(zip(stage.weights, stage.biases)):
                z = z @ w.numpy().astype(np.longdouble).T + b.numpy().astype(np.longdouble)
                if k < len(stage.activations):
                    z = np.maximum(z, 0)
        if t < len(net.activations) and net.activations[t] is not None:
            z = np.maximum(z, 0)
    gap = np.abs(logits.numpy().astype(np.longdouble) - z).max(axis=1)
    assert np.all(err.numpy() > 0) and np.all(gap <= err.numpy().astype(np.longdouble))


def _pool_graph(tail: list[onnx.NodeProto]) -> onnx.ModelProto:
    """Pow(x, 2) -> AveragePool(2) -> ``tail`` (reading "avg", writing "y") on 1 x 2 x 4 x 4 float32."""
    two = helper.make_node("Constant", [], ["two"], value=helper.make_tensor("c2", TensorProto.FLOAT, [], [2.0]))
    four = helper.make_node("Constant", [], ["four"], value=helper.make_tensor("c4", TensorProto.FLOAT, [], [4.0]))
    half = helper.make_node("Constant", [], ["half"], value=helper.make_tensor("ch", TensorProto.FLOAT, [], [0.5]))
    nodes = [two, four, half, helper.make_node("Pow", ["x", "two"], ["sq"], name="square"),
             helper.make_node("AveragePool", ["sq"], ["avg"], name="avg", kernel_shape=[2, 2], strides=[2, 2])] + tail
    return _model(nodes)


def _model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """An opset-13 float32 model from ``x`` (1 x 2 x 4 x 4) to ``y`` through ``nodes``."""
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.graph.output[0].type.tensor_type.shape.SetInParent()  # the checker wants a shape field
    return model


def test_hand_written_pattern_and_lppool_load_and_variants_are_named(rng: np.random.Generator) -> None:
    plain = _pool_graph([helper.make_node("Mul", ["avg", "four"], ["m"], name="times"),
                         helper.make_node("Sqrt", ["m"], ["y"], name="root")])
    x = rng.standard_normal((3, 2, 4, 4))
    net = from_onnx(plain)
    np.testing.assert_allclose(np.asarray(net(x)), np.stack([ort_run(plain, xi[None]).reshape(-1) for xi in x]),
                               rtol=0, atol=1e-5)
    assert abs(lipschitz(net, "combined").value / (1 + INFLATION) - 1.0) <= 1e-9
    lp_model = _model([helper.make_node("LpPool", ["x"], ["y"], name="lp", kernel_shape=[2, 2], strides=[1, 1])])
    lp_net = from_onnx(lp_model)
    np.testing.assert_allclose(np.asarray(lp_net(x)), np.stack([ort_run(lp_model, xi[None]).reshape(-1) for xi in x]),
                               rtol=0, atol=1e-5)
    assert abs(lipschitz(lp_net, "naive").value / (1 + INFLATION) - 2.0) <= 1e-9  # 2 x 2 windows, stride 1: 4 cover
    wrong_root = _pool_graph([helper.make_node("Mul", ["avg", "four"], ["m"], name="times"),
                              helper.make_node("Pow", ["m", "two"], ["y"], name="not_a_root")])
    with pytest.raises(UnsupportedOperatorError, match=r"Pow node 'square'.*Mul node 'times'.*Pow\(0.5\) or Sqrt"):
        from_onnx(wrong_root)
    no_scale = _pool_graph([helper.make_node("Sqrt", ["avg"], ["y"], name="root")])
    with pytest.raises(UnsupportedOperatorError, match=r"Pow node 'square'.*Sqrt node 'root'.*single Mul"):
        from_onnx(no_scale)


def test_what_is_refused_names_the_pooling(rng: np.random.Generator) -> None:
    with pytest.raises(UnsupportedOperatorError, match=r"LPPool2d node '2'.*norm_type=1"):
        lipcert.load(pool_model(nn.LPPool2d(1, 2)), input_shape=(2, 6, 6))
    model = MODELS["ScaledL2NormPool2d"][0]()
    with pytest.raises(UnsupportedOperatorError, match=r"ScaledL2NormPool2d node '2' is an L2-norm pooling.*CROWN"):
        to_torch(model, input_shape=(2, 6, 6))
    partial = export_onnx(pool_model(nn.LPPool2d(2, 2, ceil_mode=True), n=5), (2, 5, 5))
    with pytest.raises(UnsupportedOperatorError, match=r"Pow node .*ceil_mode=1 with a partial last window"):
        from_onnx(partial)


class FunctionalPool(nn.Module):
    """Conv -> ReLU -> F.lp_pool2d(norm_type, 3, stride 2) -> Flatten -> Linear on 1 x 7 x 7 inputs."""

    def __init__(self, norm_type: float) -> None:
        super().__init__()
        self.norm_type = norm_type
        self.conv, self.head = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.lp_pool2d(torch.relu(self.conv(x)), self.norm_type, 3, stride=2)
        return self.head(pooled.flatten(1))


def test_functional_lp_pool_loads_and_other_norms_are_named(rng: np.random.Generator) -> None:
    model = FunctionalPool(2).double().eval()
    net = lipcert.load(model, input_shape=(1, 7, 7))
    assert isinstance(net, GraphNetwork) and abs(net.pools()[0].constant() - 2.0) <= 1e-12  # 4 windows hold a pixel
    x = rng.standard_normal((5, 1, 7, 7))
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=0, atol=1e-12)
    with pytest.raises(UnsupportedOperatorError, match=r"lp_pool2d node 'lp_pool2d'.*norm_type=1"):
        lipcert.load(FunctionalPool(1).double().eval(), input_shape=(1, 7, 7))


def test_a_deel_torchlip_model_and_its_vanilla_export_load_with_the_same_bounds(rng: np.random.Generator) -> None:
    """SpectralConv2d, GroupSort2 and ScaledL2NormPool2d twice, SpectralLinear: the library's own layers (float32)."""
    import deel.torchlip as tl

    model = tl.Sequential(tl.SpectralConv2d(1, 4, 3, padding=1), tl.GroupSort2(), tl.ScaledL2NormPool2d(2),
                          tl.SpectralConv2d(4, 4, 3, padding=1), tl.GroupSort2(), tl.ScaledL2NormPool2d(2),
                          nn.Flatten(), tl.SpectralLinear(4 * 2 * 2, 5)).eval()
    net = lipcert.load(model, input_shape=(1, 8, 8))
    onet = from_onnx(export_onnx(model.vanilla_export().eval(), (1, 8, 8)))
    for loaded in (net, onet):
        assert isinstance(loaded, GraphNetwork) and len(loaded.pools()) == 2
        assert loaded.info["conversion_error"] <= 1e-5  # float32 layers, checked at float32 tolerance
    x = rng.random((4, 1, 8, 8))
    np.testing.assert_allclose(np.asarray(net(x)), np.asarray(onet(x)), rtol=0, atol=1e-5)
    low = lower_bound(net, restarts=1, samples=16)
    for method in ("naive", "combined"):
        a, b = lipschitz(net, method).value, lipschitz(onet, method).value
        assert abs(a - b) <= 1e-5 * a and a >= low.value


def test_a_partial_ceil_mode_window_makes_deel_pooling_2_lipschitz() -> None:
    """Finding: ScaledL2NormPool2d(2, ceil_mode=True) on an odd grid scales the corner window's one pixel by
    sqrt(4 / 1) = 2 (torch's average divides by the window's size inside the input), so the layer documented as
    norm preserving is 2-Lipschitz; lipcert's constant says so and x = t e_corner attains it."""
    module = ScaledL2NormPool2d(2, ceil_mode=True).double()
    net = lipcert.load(module, input_shape=(1, 5, 5))
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.5
    assert abs(float(module(x).norm()) / 1.5 - 2.0) <= 1e-12
    assert abs(lipschitz(net, "combined").value / (1 + INFLATION) - 2.0) <= 1e-9
    assert lower_bound(net, restarts=1, samples=8).value >= 2.0 * (1 - 1e-9)
