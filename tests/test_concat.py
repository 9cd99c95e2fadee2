"""Concatenated branches (adapters/residual.py, docs/decisions.md 47): [S x + c; g(x)] as a residual block with
disjoint outputs, [g_1(x); g_2(x)] as one chain; forward passes against onnxruntime and torch, bounds against
the rigorous lower bounds, refusals naming their nodes."""

from __future__ import annotations

import copy
import math
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
from lipcert.bounds.graph import disjoint_outputs
from lipcert.errors import UnsupportedOperatorError
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network


@pytest.mark.parametrize("order", ["shortcut first", "branch first"])
def test_onnx_dense_layer_is_a_block_with_disjoint_outputs(order: str, rng: np.random.Generator,
                                                           tmp_path: Path) -> None:
    """x -> h = Gemm; [h; W2 relu(W1 h)] (or the other order); relu; Gemm."""
    inits = weights(rng, {"W0": (6, 6), "b0": (6,), "W1": (5, 6), "b1": (5,), "W2": (4, 5), "b2": (4,),
                           "W3": (3, 10), "b3": (3,)})
    parts = ["h", "g"] if order == "shortcut first" else ["g", "h"]
    nodes = [gemm("stem", "x", "W0", "b0", "h"), gemm("g1", "h", "W1", "b1", "a1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"), gemm("g2", "r1", "W2", "b2", "g"),
             helper.make_node("Concat", parts, ["c"], name="dense_concat", axis=1),
             helper.make_node("Relu", ["c"], ["r"], name="relu2"), gemm("head", "r", "W3", "b3", "y")]
    path = tmp_path / "dense.onnx"
    onnx.save(onnx_model(nodes, inits), str(path))
    net = lipcert.load(path)
    assert isinstance(net, GraphNetwork) and [type(s).__name__ for s in net.stages] == ["Network", "Residual",
                                                                                        "Network"]
    block = net.stages[1]
    assert isinstance(block, Residual) and disjoint_outputs(block)
    import onnxruntime as ort

    x = rng.standard_normal((30, 6))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(net(x), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    naive = lipcert.lipschitz(net, "naive")
    stage = naive.extras["stages"][1]
    assert stage["value"] == pytest.approx(math.hypot(stage["shortcut_norm"], stage["branch"]), rel=1e-14)
    assert stage["value"] < stage["shortcut_norm"] + stage["branch"]
    combined = lipcert.lipschitz(net, "combined")
    low = lipcert.lower_bound(net, restarts=4, samples=32)
    assert naive.value >= combined.value >= low.value > 0


def test_hypot_bound_is_exact_on_x_and_relu_x() -> None:
    """h(x) = [x; relu(x)] has Lipschitz constant sqrt(2) (where x > 0); naive gives sqrt(1 + 1) and the lower
    bound finds it."""
    n = 5
    eye = torch.eye(n, dtype=torch.float64)
    zeros = torch.zeros(n, n, dtype=torch.float64)
    branch = Network.from_weights([eye, torch.cat([zeros, eye])], None, ["relu"])
    net = graph_network([Residual(branch, torch.cat([eye, zeros])), Network.from_weights([torch.eye(2 * n)])])
    assert isinstance(net, GraphNetwork) and disjoint_outputs(net.stages[0])  # type: ignore[arg-type]
    naive = lipcert.lipschitz(net, "naive").value
    low = lipcert.lower_bound(net, restarts=2, samples=16).value
    assert math.sqrt(2) * (1 - 1e-9) <= low <= naive <= math.sqrt(2) * (1 + 1e-7)  # 1e-8 certified roots


class Dense(nn.Module):
    """Two DenseNet layers on images (x -> [x; conv(relu(x))]), the second with the branch first, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(5, 2, 3, padding=1)
        self.head = nn.Linear(7 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.a(torch.relu(x))], 1)
        x = torch.cat((self.b(torch.tanh(x)), x), dim=1)
        return self.head(torch.relu(x).flatten(1))


class TwoBranches(nn.Module):
    """[conv(relu(conv3(x))); conv3(relu(conv1(x)))]: two branches of equal depth (an Inception pair)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 2, 1)
        self.c, self.d = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(4 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.c(torch.relu(self.a(x))), self.d(torch.relu(self.b(x)))], 1)
        return self.head(torch.relu(x).flatten(1))


def _onnx_export(model: nn.Module, path: Path) -> Path:
    """The float32 ONNX export (onnxruntime has no float64 Conv); lipcert reads its weights in float64."""
    torch.onnx.export(copy.deepcopy(model).float(), (torch.zeros(1, 2, 4, 4),), str(path), dynamo=False)
    return path


@pytest.mark.parametrize("cls,kinds", [(Dense, ["Residual", "Residual", "Network"]), (TwoBranches, None)])
def test_torch_and_onnx_concatenations_match_and_bound_above_lower(cls: type[nn.Module], kinds: list[str] | None,
                                                                    seed: int, rng: np.random.Generator,
                                                                    tmp_path: Path) -> None:
    torch.manual_seed(seed % 2**31)
    model = cls().double().eval()
    x = torch.as_tensor(rng.standard_normal((12, 2, 4, 4)))
    with torch.no_grad():
        ref = model(x)
    for net in (lipcert.load(model, input_shape=(2, 4, 4)), lipcert.load(_onnx_export(model, tmp_path / "m.onnx"))):
        if kinds is None:  # two branches of equal structure: one chain, stacked then block-diagonal
            assert isinstance(net, Network)
        else:
            assert isinstance(net, GraphNetwork) and [type(s).__name__ for s in net.stages] == kinds
        tol = 1e-12 if net.info.get("format", "torch") == "torch" else 1e-5  # the export's float32 weights
        assert torch.allclose(torch.as_tensor(net(x)), ref, rtol=0, atol=tol * float(ref.abs().max()))
        naive, combined = (lipcert.lipschitz(net, m).value for m in ("naive", "combined"))
        assert naive >= combined >= lipcert.lower_bound(net, restarts=2, samples=16).value


def test_rebuilt_concat_model_matches(rng: np.random.Generator) -> None:
    from lipcert.adapters.rebuild import to_torch

    model = Dense().double().eval()
    rebuilt = to_torch(model, input_shape=(2, 4, 4))
    x = torch.as_tensor(rng.standard_normal((5, 2, 4, 4)))
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), rtol=0, atol=1e-12)


class Refused(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b, self.c = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu
        if self.kind == "three":
            x = torch.cat([r(self.a(x)), r(self.b(x)), r(self.c(x))], 1)
        else:  # depths 2 and 3
            x = torch.cat([r(self.a(x)), self.c(r(self.b(r(x))))], 1)
        return x.flatten(1)


@pytest.mark.parametrize("kind,match", [
    ("three", r"cat node 'cat'.*more than two tensors computed from the input"),
    ("unequal", r"cat node 'cat': it joins two branches with activations of different structure")])
def test_unsupported_concatenations_name_the_node(kind: str, match: str) -> None:
    model = Refused(kind).double().eval()
    with pytest.raises(UnsupportedOperatorError, match=match):
        lipcert.load(model, input_shape=(2, 4, 4))


def test_onnx_three_way_concat_names_the_node(rng: np.random.Generator) -> None:
    inits = weights(rng, {"W1": (2, 6), "b1": (2,), "W2": (2, 6), "b2": (2,), "W3": (2, 6), "b3": (2,)})
    nodes = [gemm(f"g{k}", "x", f"W{k}", f"b{k}", f"a{k}") for k in (1, 2, 3)]
    nodes += [helper.make_node("Relu", [f"a{k}"], [f"r{k}"], name=f"relu{k}") for k in (1, 2, 3)]
    nodes.append(helper.make_node("Concat", ["r1", "r2", "r3"], ["y"], name="cat3", axis=1))
    with pytest.raises(UnsupportedOperatorError, match=r"Concat node 'cat3': it concatenates more than two"):
        from_onnx(onnx_model(nodes, inits, n_out=6))


@pytest.mark.parametrize("method", ["naive", "combined"])
def test_margins_through_a_last_concat_block_stay_above_jacobians(method: str, rng: np.random.Generator) -> None:
    """h(x) = [A x; G relu(W x)] as the last stage: c^T h adds both parts (c = 1 doubles [x; x]), so the margin
    form keeps Young's inequality; every Lip(c^T h) bound stays above |grad c^T h| at random points."""
    n, m = 6, 4
    a, w, g = (torch.as_tensor(rng.standard_normal(s)) for s in ((m, n), (7, n), (m, 7)))
    branch = Network.from_weights([w, torch.cat([torch.zeros(m, 7, dtype=torch.float64), g])], None, ["relu"])
    stem = Network.from_weights([torch.as_tensor(rng.standard_normal((n, n)))])
    net = graph_network([stem, Residual(branch, torch.cat([a, torch.zeros(m, n, dtype=torch.float64)]))], ["tanh"])
    assert isinstance(net, GraphNetwork) and disjoint_outputs(net.stages[-1])  # type: ignore[arg-type]
    bound = lipcert.lipschitz(net, method)
    x = torch.as_tensor(rng.standard_normal((64, n)), dtype=torch.float64).requires_grad_(True)
    for c in [np.ones(2 * m), rng.standard_normal(2 * m), np.eye(2 * m)[0] - np.eye(2 * m)[m]]:
        (grad,) = torch.autograd.grad((net.forward_flat(x) @ torch.as_tensor(c)).sum(), x)
        assert bound.along(c) >= float(grad.norm(dim=1).max())
    assert bound.value >= float(lipcert.lower_bound(net, restarts=2, samples=16).value)


def test_three_way_residual_fork_names_the_tensor(rng: np.random.Generator) -> None:
    """h + W1 relu(h) + W2 relu(h) as two Adds: the fork h feeds three layers."""
    inits = weights(rng, {"W0": (6, 6), "b0": (6,), "W1": (6, 6), "b1": (6,), "W2": (6, 6), "b2": (6,),
                           "W3": (3, 6), "b3": (3,)})
    nodes = [gemm("stem", "x", "W0", "b0", "h"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             gemm("g1", "r", "W1", "b1", "a1"), gemm("g2", "h", "W2", "b2", "a2"),
             helper.make_node("Add", ["h", "a1"], ["s1"], name="add1"),
             helper.make_node("Add", ["s1", "a2"], ["s2"], name="add2"), gemm("head", "s2", "W3", "b3", "y")]
    with pytest.raises(UnsupportedOperatorError, match=r"tensor 'h' is read by Relu 'relu', Gemm 'g2', Add 'add1'"
                                                       r".*exactly two paths"):
        from_onnx(onnx_model(nodes, inits))


def test_crown_runs_on_concatenation_models(seed: int, rng: np.random.Generator) -> None:
    """The rebuilt LayerGraph (with its Concat module) goes through auto_LiRPA; nothing it verifies is broken."""
    from lipcert.adapters.lirpa import verify
    from lipcert.attacks import attack

    torch.manual_seed(seed % 2**31)
    model = Dense().double().eval()
    net = lipcert.load(model, input_shape=(2, 4, 4))
    x = rng.random((4, 2, 4, 4))
    y = np.asarray(net(x)).argmax(axis=1)
    radius = lipcert.certify(net, x, y, method="combined").radius
    eps = [float(np.median(radius)), 10 * float(np.median(radius))]
    result = verify(model, x, y, eps=eps, verifier="crown")
    for e, verified in zip(eps, result.verified):
        broken = attack(net, x, y, norm=2, eps=e, steps=20, restarts=1).success
        assert not (verified & broken).any()
    assert result.verified[0].mean() >= (radius >= eps[0]).mean()  # CROWN not weaker than lipcert at its radii
