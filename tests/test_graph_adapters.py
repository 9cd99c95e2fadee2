"""Residual models through the adapters (adapters/residual.py): ONNX Add/Sub, fx +, errors, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import lipcert
from _graphs import gemm, onnx_model, weights
from lipcert.adapters.onnx import from_onnx
from lipcert.errors import GraphNetworkError, UnsupportedOperatorError
from lipcert.graph import GraphNetwork, Residual
from lipcert.network import Network


def residual_onnx(rng: np.random.Generator, last_op: str = "Add") -> onnx.ModelProto:
    """x -> Gemm -> h; h + W2 relu(W1 h) (identity); relu; S r  (last_op) V tanh(U r) (linear shortcut); Gemm."""
    inits = weights(rng, {"W0": (8, 6), "b0": (8,), "W1": (10, 8), "b1": (10,), "W2": (8, 10), "b2": (8,),
                           "S": (5, 8), "bs": (5,), "U": (7, 8), "bu": (7,), "V": (5, 7), "bv": (5,),
                           "W3": (3, 5), "b3": (3,)})
    nodes = [gemm("stem", "x", "W0", "b0", "h"), gemm("g1", "h", "W1", "b1", "a1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"), gemm("g2", "r1", "W2", "b2", "a2"),
             helper.make_node("Add", ["h", "a2"], ["s1"], name="add1"),
             helper.make_node("Relu", ["s1"], ["r"], name="relu2"),
             gemm("short", "r", "S", "bs", "sc"), gemm("u", "r", "U", "bu", "a3"),
             helper.make_node("Tanh", ["a3"], ["t3"], name="tanh"), gemm("v", "t3", "V", "bv", "a4"),
             helper.make_node(last_op, ["sc", "a4"], ["s2"], name="merge2"),
             helper.make_node("Relu", ["s2"], ["r2"], name="relu3"), gemm("head", "r2", "W3", "b3", "y")]
    return onnx_model(nodes, inits)


@pytest.mark.parametrize("last_op", ["Add", "Sub"])
def test_onnx_residual_model_loads_and_matches_onnxruntime(last_op: str, rng: np.random.Generator,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "res.onnx"
    onnx.save(residual_onnx(rng, last_op), str(path))
    net = lipcert.load(path)
    assert isinstance(net, GraphNetwork)
    assert net.info["conversion_error"] < 1e-12  # float64 model: checked against onnxruntime in load
    kinds = [(type(s).__name__, s.shortcut is None if isinstance(s, Residual) else None) for s in net.stages]
    assert kinds == [("Network", None), ("Residual", True), ("Residual", False), ("Network", None)]
    import onnxruntime as ort

    x = rng.standard_normal((20, 6))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(net(x), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    bound = lipcert.lipschitz(net, "combined")
    assert bound.value >= lipcert.lower_bound(net, restarts=2, samples=16).value


def test_linear_residual_loads_as_a_chain(rng: np.random.Generator) -> None:
    inits = weights(rng, {"W0": (6, 6), "b0": (6,), "W1": (6, 6), "b1": (6,), "W3": (3, 6), "b3": (3,)})
    nodes = [gemm("g0", "x", "W0", "b0", "h"), gemm("g1", "h", "W1", "b1", "a"),
             helper.make_node("Add", ["a", "h"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["r"]),
             gemm("head", "r", "W3", "b3", "y")]
    net = from_onnx(onnx_model(nodes, inits))
    assert isinstance(net, Network) and net.widths == (6, 6, 3)  # (I + W1) W0 merged: one chain
    assert net.info["conversion_error"] < 1e-12


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out (no torchvision): conv-bn-relu-conv-bn, += shortcut, relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.layer = nn.Sequential(BasicBlock(3, 3), BasicBlock(3, 4, 2))
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.layer(torch.relu(self.stem(x))), 1))


def _tiny_resnet(seed: int) -> TinyResNet:
    torch.manual_seed(seed)
    model = TinyResNet().double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_torch_basic_blocks_load_and_match_torch(seed: int, rng: np.random.Generator) -> None:
    model = _tiny_resnet(seed % 2**31)
    net = lipcert.load(model, input_shape=(1, 6, 6))
    assert isinstance(net, GraphNetwork)
    assert [type(s).__name__ for s in net.stages] == ["Network", "Residual", "Residual", "Network"]
    assert net.stages[2].shortcut is not None  # the 1x1 stride-2 downsampling as a dense shortcut
    x = torch.as_tensor(rng.random((8, 1, 6, 6)))
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(net(x), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    naive = lipcert.lipschitz(net, "naive")
    combined = lipcert.lipschitz(net, "combined")
    low = lipcert.lower_bound(net, restarts=2, samples=16)
    assert naive.value >= combined.value >= low.value


class PreActivation(nn.Module):
    """A pre-activation block x + W2 relu(W1 relu(x)) and a subtracted one, x - W4 tanh(W3 x), in plain torch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.w1, self.w2 = nn.Linear(5, 6), nn.Linear(6, 7), nn.Linear(7, 6)
        self.w3, self.w4, self.head = nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.w2(torch.relu(self.w1(torch.relu(h))))
        h = h - self.w4(torch.tanh(self.w3(h)))
        return self.head(torch.relu(h))


def test_pre_activation_and_subtracted_blocks_load_from_torch(seed: int, rng: np.random.Generator) -> None:
    torch.manual_seed(seed % 2**31)
    model = PreActivation().double().eval()
    net = lipcert.load(model, input_shape=(5,))
    assert isinstance(net, GraphNetwork) and [type(s).__name__ for s in net.stages] == [
        "Network", "Residual", "Residual", "Network"]
    assert net.activations == (None, None, net.activations[2]) and net.activations[2].name == "relu"
    x = torch.as_tensor(rng.standard_normal((10, 5)))
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(net(x), ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    assert lipcert.lipschitz(net, "combined").value >= lipcert.lower_bound(net, restarts=2, samples=16).value


def test_bad_graphs_name_their_nodes(rng: np.random.Generator) -> None:
    inits = weights(rng, {"W0": (6, 6), "b0": (6,), "W1": (4, 6), "b1": (4,), "W3": (3, 4), "b3": (3,),
                           "W5": (1, 6), "b5": (1,)})
    broadcast = [gemm("g0", "x", "W0", "b0", "h"), gemm("g1", "h", "W1", "b1", "a"), gemm("g5", "h", "W5", "b5", "c"),
                 helper.make_node("Add", ["a", "c"], ["s"], name="add_bcast"), gemm("head", "s", "W3", "b3", "y")]
    with pytest.raises(UnsupportedOperatorError, match=r"Add node 'add_bcast': it adds two branches of shapes "
                                                       r"\(1, 4\) and \(1, 1\)"):
        from_onnx(onnx_model(broadcast, inits))
    inits2 = weights(rng, {"W0": (6, 6), "b0": (6,), "W1": (6, 6), "b1": (6,), "W3": (3, 6), "b3": (3,)})
    inside = [gemm("g0", "x", "W0", "b0", "h"), helper.make_node("Softmax", ["h"], ["sm"], name="soft_in_branch"),
              gemm("g1", "sm", "W1", "b1", "a"), helper.make_node("Add", ["h", "a"], ["s"], name="add"),
              gemm("head", "s", "W3", "b3", "y")]
    with pytest.raises(UnsupportedOperatorError, match="Softmax node 'soft_in_branch'"):
        from_onnx(onnx_model(inside, inits2))
    both = [gemm("g0", "x", "W0", "b0", "h"), helper.make_node("Relu", ["h"], ["r"], name="r1"),
            helper.make_node("Tanh", ["h"], ["t"], name="t1"), gemm("g1", "t", "W1", "b1", "a"),
            helper.make_node("Add", ["r", "a"], ["s"], name="add_two_acts"), gemm("head", "s", "W3", "b3", "y")]
    with pytest.raises(UnsupportedOperatorError, match="Add node 'add_two_acts': both of its inputs pass through"):
        from_onnx(onnx_model(both, inits2))


def test_cli_bound_and_certify_run_on_a_residual_onnx_model(rng: np.random.Generator, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert.cli import main

    path = tmp_path / "res.onnx"
    onnx.save(residual_onnx(rng), str(path))
    assert main(["bound", str(path), "--method", "naive,combined", "--json", "--lower-seconds", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bounds"]["naive"] >= out["bounds"]["combined"] >= out["lower_bound"] > 0
    net = lipcert.load(path)
    x = rng.random((40, 6))
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=np.asarray(net(x)).argmax(axis=1))
    run = tmp_path / "run"
    argv = ["certify", str(path), "--dataset", str(data), "--method", "naive,combined", "--eps", "0.001,0.01",
            "--attack", "--attack-steps", "10", "--attack-restarts", "1", "--out", str(run)]
    assert main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["methods"] == ["naive", "combined"] and sum(report["attack"]["violations"]) == 0
    assert report["certified_accuracy"]["combined"][0] >= report["certified_accuracy"]["naive"][0]
    with pytest.raises(GraphNetworkError, match="residual blocks"):
        lipcert.combine(net, x[:2], np.zeros(2, dtype=np.int64), eps=[0.1])


def test_crown_runs_on_rebuilt_residual_models(rng: np.random.Generator, tmp_path: Path) -> None:
    from lipcert.adapters.lirpa import verify
    from lipcert.adapters.rebuild import to_torch
    from lipcert.attacks import attack

    path = tmp_path / "res.onnx"
    onnx.save(residual_onnx(rng), str(path))
    model = _tiny_resnet(int(rng.integers(2**31)))
    cases = [(str(path), lipcert.load(path), rng.random((6, 6))),
             (model, lipcert.load(model, input_shape=(1, 6, 6)), rng.random((4, 1, 6, 6)))]
    for source, net, x in cases:
        rebuilt = to_torch(source, input_shape=None if isinstance(source, str) else (1, 6, 6))
        with torch.no_grad():
            out = rebuilt(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(out, net(x), rtol=0, atol=1e-12 * np.abs(out).max())
        y = np.asarray(net(x)).argmax(axis=1)
        radius = lipcert.certify(net, x, y, method="combined").radius
        eps = [float(np.median(radius)), 20 * float(np.median(radius))]
        result = verify(source, x, y, eps=eps, verifier="crown")
        assert result.verified[0].mean() >= (radius >= eps[0]).mean()  # CROWN is not weaker at lipcert's radii here
        for e, verified in zip(eps, result.verified):
            broken = attack(net, x, y, norm=2, eps=e, steps=20, restarts=1).success
            assert not (verified & broken).any()
