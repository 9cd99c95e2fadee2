"""Max pooling as an exact max tree of ReLUs: same function as the model, bounds above its Jacobian norms."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import lipcert
from lipcert.adapters.maxpool import pooled_positions
from lipcert.bounds.lower import jacobian_bound
from lipcert.errors import UnsupportedOperatorError

METHODS = ("naive", "eclipse-fast", "combined")


class FunctionalPool(nn.Module):
    """Pooling written in forward (F.max_pool2d), before the ReLU: signed inputs to the max tree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1))
        return self.fc(x.flatten(1))


def cnn(pool: nn.Module, channels: int = 1, size: int = 8) -> nn.Module:
    """conv -> ReLU -> pool -> linear: the shape of the VNN-COMP and ERAN max-pool CNNs."""
    body = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten())
    with torch.no_grad():
        features = body(torch.zeros(1, channels, size, size)).shape[1]
    return nn.Sequential(*body, nn.Linear(features, 6)).eval()


POOLS = {
    "2x2": lambda: cnn(nn.MaxPool2d(2)),
    "3x3-stride1-overlap": lambda: cnn(nn.MaxPool2d(3, stride=1, padding=1), size=6),
    "3x3-stride2-ceil": lambda: cnn(nn.MaxPool2d(3, stride=2, ceil_mode=True)),
    "dilated": lambda: cnn(nn.MaxPool2d(2, stride=1, dilation=2)),
    "adaptive": lambda: cnn(nn.AdaptiveMaxPool2d((3, 2))),
    "functional-signed": lambda: FunctionalPool().eval(),
    "1d": lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.MaxPool1d(3, stride=2), nn.Flatten(),
                                nn.Linear(27, 4)).eval(),
    "3d": lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(), nn.Linear(16, 3)).eval(),
}
SHAPES = {"1d": (2, 22), "3d": (1, 5, 5, 5), "3x3-stride1-overlap": (1, 6, 6)}


def _jacobian_norm(model: nn.Module, points: torch.Tensor) -> float:
    """max_x ||J(x)||_2 of the original torch model at the given points (autograd, float64)."""
    model = model.double()
    best = 0.0
    for x in points:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None]).reshape(-1), x).reshape(-1, x.numel())
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


@pytest.mark.parametrize("name", list(POOLS))
def test_max_tree_is_the_model_and_bounds_exceed_its_jacobians(name: str) -> None:
    model = POOLS[name]()
    shape = SHAPES.get(name, (1, 8, 8))
    net = lipcert.load(model, input_shape=shape)
    x = torch.randn(40, *shape, dtype=torch.float64)
    x[:5] = 0.5  # ties in every window
    x[5:10] = -torch.rand(5, *shape, dtype=torch.float64)  # all negative
    with torch.no_grad():
        expected = model.double()(x).reshape(len(x), -1)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
    lower = max(_jacobian_norm(model, x[10:26]), jacobian_bound(net, samples=64)[0])
    for method in METHODS:
        bound = lipcert.lipschitz(net, method=method).value
        assert bound >= lower * (1 - 1e-9), (method, bound, lower)


@pytest.mark.parametrize("pool,true_constant,tight", [
    (nn.MaxPool2d(2), 1.0, 1.2), (nn.MaxPool2d(3, stride=2), 2.0, 2.6),
    (nn.MaxPool2d(3, stride=1, padding=1), 3.0, 4.5)])
def test_pooling_after_relu_alone(pool: nn.Module, true_constant: float, tight: float) -> None:
    """ReLU -> max pool: Lipschitz constant sqrt(most windows an input is the max of); the nonnegative max tree
    (3 ReLUs per pair) gets the combined bound within ``tight`` of it."""
    net = lipcert.load(nn.Sequential(nn.ReLU(), pool, nn.Flatten()), input_shape=(1, 8, 8))
    signed = lipcert.load(nn.Sequential(pool, nn.Flatten()), input_shape=(1, 8, 8))
    assert net.widths[2] < signed.widths[1]  # after the ReLU, the nonnegative form (fewer units) was chosen
    assert lipcert.lipschitz(signed, method="combined").value > 1.3 * true_constant  # and it is the tighter one
    lower = lipcert.lower_bound(net)
    assert lower.jacobian == pytest.approx(true_constant, rel=1e-9)
    bound = lipcert.lipschitz(net, method="combined").value
    assert true_constant * (1 - 1e-9) <= bound <= tight


def test_window_positions_follow_torch() -> None:
    for length, k, s, p, d, ceil in [(7, 3, 2, 1, 1, True), (8, 2, 2, 0, 1, False), (9, 3, 3, 1, 2, True),
                                     (5, 3, 2, 1, 1, True)]:
        windows = pooled_positions(length, k, s, p, p, d, ceil)
        x = torch.randn(1, 1, length, dtype=torch.float64)
        expected = F.max_pool1d(x, k, s, p, d, ceil_mode=ceil).reshape(-1)
        got = torch.stack([x[0, 0, w].max() for w in windows])
        torch.testing.assert_close(got, expected)


def _onnx_pool_model(tmp_path: Path) -> Path:
    """Conv -> MaxPool (pads, ceil_mode) -> Relu -> GlobalMaxPool -> Flatten -> Gemm, float32, opset 13."""
    rng = np.random.default_rng(5)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0],
                              ceil_mode=1),
             helper.make_node("Relu", ["p"], ["r"]), helper.make_node("GlobalMaxPool", ["r"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    return path


def test_onnx_max_pool_matches_onnxruntime(tmp_path: Path) -> None:
    path = _onnx_pool_model(tmp_path)
    net = lipcert.load(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(1).standard_normal((8, 1, 1, 9, 9)).astype(np.float32)
    expected = np.stack([session.run(None, {"x": x})[0].reshape(-1) for x in xs])
    np.testing.assert_allclose(net(xs.reshape(8, 1, 9, 9).astype(np.float64)), expected, rtol=1e-5, atol=1e-5)
    assert lipcert.lipschitz(net, method="combined").value >= jacobian_bound(net)[0]


def test_exported_torch_cnn_with_max_pool(tmp_path: Path) -> None:
    model = cnn(nn.MaxPool2d(2), channels=3, size=8)
    buffer = io.BytesIO()
    torch.onnx.export(model.float(), (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, input_names=["x"])
    path = tmp_path / "cnn.onnx"
    path.write_bytes(buffer.getvalue())
    from_onnx, from_torch = lipcert.load(path), lipcert.load(model, input_shape=(3, 8, 8))
    assert from_onnx.widths == from_torch.widths
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(from_onnx(x), from_torch(x), rtol=1e-5, atol=1e-5)


def test_indices_are_refused() -> None:
    class WithIndices(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            values, _ = F.max_pool2d(x, 2, return_indices=True)
            return values.flatten(1)

    for model in (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), WithIndices()):
        with pytest.raises(UnsupportedOperatorError, match="argmax indices"):
            lipcert.load(model, input_shape=(1, 4, 4))
