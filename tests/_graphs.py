"""Shared pieces of the graph tests: small ONNX graphs built node by node, and the bound checks every
graph with a cut stage (L2-norm pooling, L2-norm residual) must pass."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipcert.bounds import lipschitz, lower_bound
from lipcert.graph import GraphNetwork
from lipcert.radii import pairwise_constants

METHODS = ["naive", "eclipse-fast", "gc", "shift", "combined"]


def onnx_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], n_in: int = 6, n_out: int = 3
               ) -> onnx.ModelProto:
    """A float64 ONNX model from input x (N, n_in) to output y (N, n_out)."""
    graph = helper.make_graph(nodes, "graph", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", n_out])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def export_onnx(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """``model``'s float32 TorchScript ONNX export (opset 17, dynamic batch) for inputs of ``shape``; the model is
    left in float64."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float(), torch.rand(2, *shape), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model.double()
    return onnx.load_from_string(buf.getvalue())


def gemm(name: str, x: str, w: str, b: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, w, b], [out], name=name, transB=1)


def weights(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s) / np.sqrt(s[-1]) for k, s in shapes.items()}


def check_cut_graph_bounds(net: GraphNetwork, name: str, kind: str, rng: np.random.Generator) -> None:
    """Every method (and a short ``optimized``) on ``net`` is >= the rigorous lower bound and lists a stage of
    ``kind``; combined <= naive; every method's margin constants L_ij >= ||(e_i - e_j)^T J(x)|| at sampled x."""
    low = lower_bound(net, restarts=2, samples=32)
    assert low.value > 0
    bounds = {m: lipschitz(net, m) for m in METHODS}
    bounds["optimized"] = lipschitz(net, "optimized", options={"iterations": 5})
    for method, b in bounds.items():
        assert b.value >= low.value, f"{name} {method}: {b.value} below the lower bound {low.value}"
        assert any(st["kind"] == kind for st in b.extras["stages"])
    assert bounds["combined"].value <= bounds["naive"].value * (1 + 1e-9)
    xs = torch.as_tensor(rng.standard_normal((8, net.input_dim)))
    jac = torch.stack([torch.autograd.functional.jacobian(lambda z: net.forward_flat(z[None])[0], xi) for xi in xs])
    diff = (jac[:, :, None, :] - jac[:, None, :, :]).norm(dim=-1).amax(dim=0).numpy()
    for method, b in bounds.items():
        assert np.all(pairwise_constants(b, net) >= diff), method
