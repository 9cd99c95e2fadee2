"""Convolutions kept as operators by default: the dense / matrix-free choice, its memory estimate, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import lipcert
from lipcert.bounds.conv_norm import conv_norm
from lipcert.bounds.methods import resolve
from lipcert.bounds.workspace import matrix_free_bytes, method_bytes
from lipcert.cli import main
from lipcert.memory import PeakMemory
from lipcert.operators import Conv2dOperator


def _model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 4, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 5)).double().eval()


def test_onnx_convolutions_load_as_operators_and_compute_the_model(tmp_path: Path, seed: int) -> None:
    model = _model(seed)
    path = tmp_path / "conv.onnx"
    buf = io.BytesIO()
    torch.onnx.export(model.float(), torch.rand(2, 3, 8, 8), buf, dynamo=False, opset_version=13,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    path.write_bytes(buf.getvalue())
    net, dense = lipcert.load(path), lipcert.load(path, dense=True)
    assert [op is not None for op in net.operators] == [True, True, False, False] and not dense.has_operators
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x), dense(x), rtol=1e-10, atol=1e-10)
    assert net.info["conversion_error"] is not None  # checked against onnxruntime on the operator form


def test_each_method_records_its_path_and_the_matrix_free_estimate_covers_the_peak(seed: int) -> None:
    net = lipcert.load(_model(seed), input_shape=(3, 8, 8))
    free, dense = matrix_free_bytes(net), method_bytes(net, "naive", resolve("naive").options)
    assert free < dense
    budget = (free + dense) // 2
    lipcert.lipschitz(net, "naive", max_bytes=budget)  # libraries loaded on first use are not the method's
    with PeakMemory() as memory:
        b = lipcert.lipschitz(net, "naive", max_bytes=budget)
    assert b.extras["path"] == "matrix-free" and b.extras["memory_estimate"] == free
    assert 0 <= memory.peak_bytes <= free, (memory.peak_bytes, free)
    exact = lipcert.lipschitz(net, "naive")  # fits the default budget: dense, exact spectral norms
    assert exact.extras["path"] == "dense" and exact.extras["memory_estimate"] == dense
    assert exact.value * (1 - 1e-9) <= b.value <= exact.value * 1.02
    assert lipcert.lower_bound(net, samples=32, seed=seed).value <= exact.value


def test_cli_bound_prints_the_path_and_peak_memory(tmp_path: Path, seed: int,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(seed)
    path = tmp_path / "conv.pt"
    torch.save(model, path)
    net = lipcert.load(model, input_shape=(3, 8, 8))
    dense = method_bytes(net, "naive", resolve("naive").options)
    gb = (matrix_free_bytes(net) + dense) / 2e9
    args = ["bound", str(path), "--input-shape", "3,8,8", "--method", "naive,combined", "--no-lower", "--json"]
    assert main([*args, "--max-dense-gb", f"{gb:.6f}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paths"] == {"naive": "matrix-free", "combined": "per-frequency"}  # neither densifies
    assert all(v > 0 for v in out["bounds"].values()) and out["peak_memory_bytes"]["naive"] >= 0
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paths"] == {"naive": "dense", "combined": "dense"}
    assert out["bounds"]["combined"] <= out["bounds"]["naive"] * (1 + 1e-9)
    assert main(["bound", str(path), "--input-shape", "3,8,8", "--method", "naive", "--no-lower"]) == 0
    assert "peak MB  path" in capsys.readouterr().out


def test_unread_polyphase_components_are_dropped_and_a_strided_1x1_norm_is_exact(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(12, 8, 1, 1, generator=gen, dtype=torch.float64)
    op = Conv2dOperator.conv(kernel, (8, 10, 10), stride=2)
    exact = float(torch.linalg.matrix_norm(kernel[:, :, 0, 0], 2))
    bound = conv_norm(op, dense_limit=0)
    assert bound.method == "frequency" and exact <= bound.value <= exact * (1 + 1e-6)  # rounding margins only
    # 3x3, stride 2: both phases read; frequency bound >= the exact norm of the dense matrix
    op = Conv2dOperator.conv(torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64), (4, 9, 9), stride=2, padding=1)
    assert float(torch.linalg.matrix_norm(op.dense(), 2)) <= conv_norm(op, dense_limit=0).value
