"""ONNX models older than opset 9 are converted with onnx.version_converter, checked against onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcert
from lipcert.cli import main


def acas_like(rng: np.random.Generator, opset: int) -> onnx.ModelProto:
    """An ACAS Xu-shaped net (input 1x1x1x5, normalization, MatMul/Add/Relu, a Gemm) in an old opset."""
    sizes = [5, 16, 16, 5]
    inits = {"shape": np.array([1, 5], np.int64), "mean": rng.random(5).astype(np.float32),
             "range": (1 + rng.random(5)).astype(np.float32)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("Div", ["c", "range"], ["n"]),
             helper.make_node("Reshape", ["n", "shape"], ["h0"])]
    for k in range(len(sizes) - 2):
        inits[f"W{k}"] = rng.standard_normal((sizes[k], sizes[k + 1])).astype(np.float32) / 2
        inits[f"b{k}"] = rng.standard_normal(sizes[k + 1]).astype(np.float32)
        nodes += [helper.make_node("MatMul", [f"h{k}", f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"]),
                  helper.make_node("Relu", [f"a{k}"], [f"h{k + 1}"])]
    inits["Wo"] = rng.standard_normal((sizes[-1], sizes[-2])).astype(np.float32)
    inits["bo"] = rng.standard_normal(sizes[-1]).astype(np.float32)
    nodes.append(helper.make_node("Gemm", [f"h{len(sizes) - 2}", "Wo", "bo"], ["y"], transB=1))
    graph = helper.make_graph(nodes, "acas", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [7, 8])
def test_old_opset_is_converted_and_matches_onnxruntime_on_the_original(tmp_path: Path, rng: np.random.Generator,
                                                                        opset: int) -> None:
    model = acas_like(rng, opset)
    path = tmp_path / "acas.onnx"
    onnx.save(model, path)
    net = lipcert.load(path)
    assert net.info["opset"] == opset and net.info["conversion_error"] is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = rng.random((6, 1, 1, 1, 5)).astype(np.float32)
    expected = np.stack([session.run(None, {"x": x})[0].reshape(-1) for x in xs])
    np.testing.assert_allclose(net(xs.reshape(6, *net.input_shape).astype(np.float64)), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    lower = lipcert.lower_bound(net).value
    assert lipcert.lipschitz(net, method="combined").value >= lower > 0


def test_inspect_says_the_opset_was_converted(tmp_path: Path, rng: np.random.Generator,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acas.onnx"
    onnx.save(acas_like(rng, 8), path)
    assert main(["inspect", str(path)]) == 0
    assert "note: opset 8 converted to opset 13 with onnx.version_converter" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("onnxruntime on the original" in n for n in notes)
