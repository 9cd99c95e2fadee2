"""Norm-preserving reshuffles (pixel (un)shuffle, DepthToSpace / SpaceToDepth, channel padding and slicing).

They are permutations or zero-paddings / coordinate projections, linear maps of norm at most 1, so they load as
affine layers that merge into the neighbouring affine maps exactly (docs/decisions.md 40).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from deel.torchlip import InvertibleDownSampling, InvertibleUpSampling
from onnx import TensorProto, helper
from torch import nn

import lipcert
from lipcert.adapters.onnx import from_onnx


class Fn(nn.Module):
    """A module applying a function (so fx traces the function call itself)."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


RESHUFFLES: dict[str, Callable[[], nn.Module]] = {
    "PixelUnshuffle": lambda: nn.PixelUnshuffle(2), "PixelShuffle": lambda: nn.PixelShuffle(2),
    "F.pixel_unshuffle": lambda: Fn(lambda x: F.pixel_unshuffle(x, 2)),
    "F.pixel_shuffle": lambda: Fn(lambda x: F.pixel_shuffle(x, 2)),
    "InvertibleDownSampling": lambda: InvertibleDownSampling(2),
    "InvertibleUpSampling": lambda: InvertibleUpSampling(2, k_coef_lip=1.0),
    "F.pad channels": lambda: Fn(lambda x: F.pad(x, (0, 0, 0, 0, 1, 3))),
    "channel slice": lambda: Fn(lambda x: x[:, 1:3]),
}


def conv_reshuffle(name: str) -> nn.Module:
    """Conv -> reshuffle -> ReLU -> Flatten -> Linear on 4 x 4 x 4 inputs, float64."""
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), RESHUFFLES[name]())
    width = body(torch.zeros(1, 4, 4, 4, dtype=torch.float32)).numel()
    return nn.Sequential(*body, nn.ReLU(), nn.Flatten(), nn.Linear(width, 3)).double().eval()


def export(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float(), torch.rand(2, *shape, dtype=torch.float32), buf, dynamo=False,
                          opset_version=13, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model.double()
    return onnx.load_from_string(buf.getvalue())


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x.astype(np.float32)})[0])


@pytest.mark.parametrize("name", list(RESHUFFLES))
def test_torch_reshuffle_matches_torch(name: str) -> None:
    model = conv_reshuffle(name)
    net = lipcert.load(model, input_shape=(4, 4, 4))
    x = torch.randn(6, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(net(x.numpy()), expected, rtol=0, atol=1e-10)
    assert tuple(net.activation_names) == ("relu",)  # the reshuffle merged into the affine maps, no extra layer


@pytest.mark.parametrize("name", list(RESHUFFLES))
def test_exported_reshuffle_matches_onnxruntime(name: str, rng: np.random.Generator) -> None:
    onnx_model = export(conv_reshuffle(name), (4, 4, 4))
    net = from_onnx(onnx_model)
    xs = rng.standard_normal((6, 4, 4, 4))
    np.testing.assert_allclose(net(xs), ort_run(onnx_model, xs), rtol=0, atol=1e-5)


def one_node_model(node: onnx.NodeProto, shape: list[int], infer: bool = True) -> onnx.ModelProto:
    """An opset-13 float32 model of one node from ``x`` (of ``shape``, batch axis 1) to ``y``."""
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if infer:
        model = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].type.tensor_type.shape.SetInParent()  # the checker wants a shape field
    return model


@pytest.mark.parametrize(("op", "attrs", "shape"), [
    ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, [1, 8, 3, 2]),
    ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, [1, 8, 3, 2]),
    ("DepthToSpace", {"blocksize": 3}, [1, 9, 2, 2]),
    ("SpaceToDepth", {"blocksize": 2}, [1, 3, 4, 6]),
])
def test_depth_space_nodes_match_onnxruntime(op: str, attrs: dict[str, object], shape: list[int],
                                             rng: np.random.Generator) -> None:
    model = one_node_model(helper.make_node(op, ["x"], ["y"], **attrs), shape)
    net = from_onnx(model)
    xs = rng.standard_normal((5, *shape[1:]))
    expected = np.stack([ort_run(model, x[None]).reshape(-1) for x in xs])
    np.testing.assert_allclose(net(xs), expected, rtol=0, atol=1e-5)
    # a permutation: the one dense matrix is orthogonal with one 1 per row
    (w,) = (m.numpy() for m in net.weights)
    np.testing.assert_array_equal(w @ w.T, np.eye(w.shape[0]))
    np.testing.assert_array_equal(np.sort(w, axis=1)[:, -1], np.ones(w.shape[0]))


def test_depth_to_space_with_indivisible_channels_is_named() -> None:
    model = one_node_model(helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, name="d2s"), [1, 6, 2, 2],
                           infer=False)
    with pytest.raises(lipcert.errors.UnsupportedOperatorError, match="DepthToSpace.*d2s"):
        from_onnx(model)


def _spectral_norm(f: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> float:
    """Largest singular value of a linear map, from its dense matrix."""
    n = int(np.prod(shape))
    cols = f(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols, ord=2))


def test_pixel_unshuffle_contributes_exactly_one_to_the_naive_bound() -> None:
    conv1, conv2 = nn.Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(12, 4, 3, padding=1).double()
    fc = nn.Linear(4 * 3 * 3, 5).double()
    model = nn.Sequential(conv1, nn.ReLU(), nn.PixelUnshuffle(2), conv2, nn.ReLU(), nn.Flatten(), fc).eval()
    with torch.no_grad():
        expected = (_spectral_norm(lambda x: F.conv2d(x, conv1.weight, padding=1), (2, 6, 6))
                    * _spectral_norm(lambda x: F.conv2d(x, conv2.weight, padding=1), (12, 3, 3))
                    * float(torch.linalg.matrix_norm(fc.weight, ord=2)))
    net = lipcert.load(model, input_shape=(2, 6, 6))
    naive = lipschitz_value(net)
    assert naive == pytest.approx(expected, rel=1e-6)
    assert naive >= lipcert.lower_bound(net, restarts=2, samples=32).value


def lipschitz_value(net: lipcert.Network) -> float:
    return float(lipcert.lipschitz(net, "naive").value)
