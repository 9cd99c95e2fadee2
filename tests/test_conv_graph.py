"""Residual graphs with convolutions kept as operators (docs/decisions.md 51): loading, forward, bounds, memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.bounds.closed_form import closed_form_slopes
from lipcert.bounds.conv_block import block_rho
from lipcert.bounds.conv_norm import conv_norm
from lipcert.bounds.conv_closed_form import single_rule_conv
from lipcert.bounds.graph_lower import graph_jacobian_bound
from lipcert.bounds.recursion import replay
from lipcert.bounds.residual_block import block_constant
from lipcert.bounds.rules import Rule
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.graph_rounding import error_plan, forward_error
from lipcert.memory import PeakMemory
from lipcert.network import Network
from lipcert.operators import Conv2dOperator

nn = torch.nn


class Block(nn.Module):
    """relu of y + s, y - s or s - y (``merge``), y = conv2(relu(conv1(x))) and s = x, or a 1x1 stride-2 conv of x
    where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, merge: str = "y + s") -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, stride, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        s = x if self.shortcut is None else self.shortcut(x)
        return torch.relu({"y + s": y + s, "y - s": y - s, "s - y": s - y}[self.merge])


class SmallResNet(nn.Module):
    """Stem conv, an identity block, a subtracted 1x1-stride-2-conv shortcut, a subtracted branch, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.blocks = nn.Sequential(Block(4, 4, 1), Block(4, 6, 2, "y - s"), Block(6, 6, 1, "s - y"))
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.blocks(torch.relu(self.stem(x))), 1))


def _model(seed: int) -> SmallResNet:
    torch.manual_seed(seed % 2**31)
    return SmallResNet().double().eval()


def _onnx(model: nn.Module, path: Path) -> Path:
    buf = io.BytesIO()
    torch.onnx.export(model.float(), torch.rand(2, 3, 8, 8), buf, dynamo=False, opset_version=13,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    path.write_bytes(buf.getvalue())
    model.double()
    return path


def test_conv_resnet_keeps_convolutions_as_operators_and_computes_the_model(tmp_path: Path, seed: int,
                                                                            rng: np.random.Generator) -> None:
    import onnxruntime as ort

    model = _model(seed)
    path = _onnx(model, tmp_path / "resnet.onnx")
    x = rng.random((6, 3, 8, 8))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.astype(np.float32)})[0]
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    for net in (lipcert.load(path), lipcert.load(model, input_shape=(3, 8, 8))):
        assert isinstance(net, GraphNetwork) and net.has_operators
        blocks = [s for s in net.stages if isinstance(s, Residual)]
        assert [type(b.shortcut).__name__ for b in blocks] == ["NoneType", "Conv2dOperator", "NoneType"]
        assert all(b.branch.has_operators for b in blocks)  # s - y: the branch's last kernel negated
        got = np.asarray(net(x))
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())  # float32 onnxruntime
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
        dense = lipcert.load(model, input_shape=(3, 8, 8), dense=True)
        assert isinstance(dense, GraphNetwork) and not dense.has_operators
        np.testing.assert_allclose(np.asarray(net.densified()(x)), np.asarray(dense(x)), rtol=0, atol=1e-12)
        assert net.fingerprint() != dense.fingerprint() and net.fingerprint() == net.fingerprint()


def test_matrix_free_graph_bounds_against_dense_and_lower_bounds(seed: int) -> None:
    net = lipcert.load(_model(seed), input_shape=(3, 8, 8))
    low = lipcert.lower_bound(net, restarts=2, samples=32, seed=seed % 2**31).value
    naive_free = lipcert.lipschitz(net, "naive", path="matrix-free")
    naive_dense = lipcert.lipschitz(net, "naive", path="dense")
    assert naive_free.extras["graph_path"] == "operators" and naive_dense.extras["graph_path"] == "dense"
    assert naive_free.extras["stages"][0]["path"] == "matrix-free"
    # the same product; the conv norms are certified upper bounds (exact Gram on these small grids)
    assert naive_dense.value * (1 - 1e-9) <= naive_free.value <= naive_dense.value * 1.01
    for method in ("eclipse-fast", "combined"):
        free = lipcert.lipschitz(net, method, path="matrix-free")
        dense = lipcert.lipschitz(net, method)  # fits the default budget: the dense form as a whole
        assert dense.extras["graph_path"] == "dense" and "skipped" not in dense.extras
        assert free.extras["graph_path"] == "operators"
        # the branches per frequency (where the naive product beside the rule is smaller, it is reported)
        assert {s["path"] for s in free.extras["stages"][1:4]} <= {"per-frequency", "matrix-free naive"}
        # every block has the per-frequency certificate (decisions 52); combined's carried recursion needs dense
        assert free.extras.get("skipped", []) == ([] if method == "eclipse-fast" else
                                                  ["the carried-form recursion through the graph (convolutions kept "
                                                   "as operators)"])
        assert low <= dense.value <= naive_dense.value * (1 + 1e-9)
        assert low <= free.value <= naive_free.value * (1 + 1e-9)


def test_per_frequency_on_a_branch_of_circular_convolutions_is_the_dense_pass(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k1, k2 = (torch.randn(6, 6, 3, 3, generator=gen, dtype=torch.float64) / 6 for _ in range(2))
    ops = [Conv2dOperator.conv(k, (6, 8, 8), padding=1, circular=True) for k in (k1, k2)]
    branch = Network.from_weights(ops, [torch.randn(384, generator=gen, dtype=torch.float64) for _ in ops], ["relu"])
    free = lipcert.lipschitz(branch, "eclipse-fast", path="matrix-free")
    dense = lipcert.lipschitz(branch, "eclipse-fast", path="dense")
    assert free.extras["path"] == "per-frequency" and free.extras["scalar_gram"]
    assert free.value == pytest.approx(dense.value, rel=1e-9)  # circular: the dense pass with the same multipliers
    assert free.value >= dense.value * (1 - 1e-12)
    short = Conv2dOperator.conv(torch.randn(6, 6, 1, 1, generator=gen, dtype=torch.float64), (6, 8, 8))
    graph = graph_network([Residual(branch, short)], input_shape=(6, 8, 8))
    assert isinstance(graph, GraphNetwork)
    low, _ = graph_jacobian_bound(graph, samples=8, steps=3, generator=gen)  # 384 outputs: 384 backward passes a step
    for method in ("naive", "eclipse-fast", "combined"):
        assert lipcert.lipschitz(graph, method, path="matrix-free").value >= low


def test_rounding_bound_through_a_conv_shortcut_covers_the_dense_forward(seed: int, rng: np.random.Generator) -> None:
    net = lipcert.load(_model(seed), input_shape=(3, 8, 8))
    assert isinstance(net, GraphNetwork)
    x = torch.as_tensor(rng.random((5, 192)))
    z, err = forward_error(error_plan(net), x)
    z_dense, err_dense = forward_error(error_plan(net.densified()), x)
    assert bool((err > 0).all()) and bool(((z - z_dense).abs().amax(1) <= err + err_dense).all())
    assert torch.allclose(err, err_dense, rtol=0.5)  # the same analysis (kernel rows: fewer terms per sum)


def _cifar_resnet(seed: int) -> GraphNetwork:
    """A CIFAR-ResNet-shaped graph: 3x32x32, stem conv to 16 channels, an identity block, a 16->32 block
    with a 1x1 stride-2 conv shortcut, a linear head; He-normal kernels."""
    gen = torch.Generator().manual_seed(seed)

    def conv(cout: int, cin: int, k: int, shape: tuple[int, int, int], stride: int = 1) -> Conv2dOperator:
        w = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64) * (2 / (cin * k * k)) ** 0.5
        return Conv2dOperator.conv(w, shape, stride=stride, padding=k // 2)

    def chain(*ops: Conv2dOperator) -> Network:
        return Network.from_weights(list(ops), [torch.zeros(op.shape[0], dtype=torch.float64) for op in ops],
                                    ["relu"] * (len(ops) - 1))

    stem = chain(conv(16, 3, 3, (3, 32, 32)))
    b1 = Residual(chain(conv(16, 16, 3, (16, 32, 32)), conv(16, 16, 3, (16, 32, 32))))
    b2 = Residual(chain(conv(32, 16, 3, (16, 32, 32), 2), conv(32, 32, 3, (32, 16, 16))),
                  conv(32, 16, 1, (16, 32, 32), 2))
    head = Network.from_weights([torch.randn(10, 8192, generator=gen, dtype=torch.float64) / 90.0])
    net = graph_network([stem, b1, b2, head], ["relu", "relu", "relu"], input_shape=(3, 32, 32))
    assert isinstance(net, GraphNetwork)
    return net


def test_cifar_resnet_is_bounded_naive_without_dense_matrices(seed: int) -> None:
    net = _cifar_resnet(seed)
    assert net.dense_nbytes > 7e9  # its dense form: 2.1 GB per 16-channel 32x32 conv
    budget = 1e9
    lipcert.lipschitz(net.stages[0], "naive", max_bytes=budget)  # libraries loaded on first use are not the bound's
    with PeakMemory() as memory:
        bound = lipcert.lipschitz(net, "naive", max_bytes=budget)
    assert bound.extras["graph_path"] == "operators"
    assert [s["path"] for s in bound.extras["stages"]] == ["matrix-free"] * 3 + ["dense"]
    assert memory.peak_bytes < 4e8, memory.peak_bytes
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    low, _ = graph_jacobian_bound(net, samples=4, steps=2, generator=torch.Generator().manual_seed(seed))
    assert 0 < low <= bound.value and bool(torch.isfinite(torch.as_tensor(net(x))).all())


def test_per_frequency_on_zero_padded_convolutions_only_covers_the_dense_pass_with_its_multipliers(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ops = [Conv2dOperator.conv(torch.randn(5, 4, 3, 3, generator=gen, dtype=torch.float64) / 4, (4, 7, 7), padding=1),
           Conv2dOperator.conv(torch.randn(6, 5, 3, 3, generator=gen, dtype=torch.float64) / 4, (5, 7, 7), stride=2,
                               padding=1)]
    chain = Network.from_weights(ops, [torch.zeros(op.shape[0], dtype=torch.float64) for op in ops], ["relu"])
    for rule in (Rule("sn", 1.0), Rule("gc", 1.99), Rule("shift", 1.5)):
        surrogate = single_rule_conv(chain, rule)
        dense = chain.densified()
        same = replay(list(dense.weights), closed_form_slopes(dense.slopes()), surrogate.multipliers, surrogate.labels)
        assert same.value <= surrogate.value * (1 + 1e-9)  # the restriction argument at the last layer too


@pytest.mark.parametrize(("circular", "stride"), [(True, 0), (False, 0), (True, 2), (False, 2)])
def test_block_certificate_per_frequency_against_the_dense_block_certificate(seed: int, circular: bool,
                                                                            stride: int) -> None:
    """stride 0: an identity block; 2: a stride-2 block with a 1x1 stride-2 conv shortcut (4 -> 6 channels)."""
    gen = torch.Generator().manual_seed(seed)
    c_out, side = (4, 6) if stride == 0 else (6, 3)
    k1 = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64) / 4
    k2 = torch.randn(c_out, 6, 3, 3, generator=gen, dtype=torch.float64) / 4
    ops = [Conv2dOperator.conv(k1, (4, 6, 6), padding=1, circular=circular, stride=max(stride, 1)),
           Conv2dOperator.conv(k2, (6, side, side), padding=1, circular=circular)]
    branch = Network.from_weights(ops, [torch.randn(op.shape[0], generator=gen, dtype=torch.float64) for op in ops],
                                  ["relu"])
    short = None if stride == 0 else Conv2dOperator.conv(
        torch.randn(c_out, 4, 1, 1, generator=gen, dtype=torch.float64) / 2, (4, 6, 6), stride=2, circular=circular)
    block = Residual(branch, short)
    found = block_rho(block, [Rule("sn", 1.0)])
    assert found is not None
    dense = branch.densified()
    alpha, beta = dense.slopes()[0]
    s = None if short is None else short.dense()
    reference = block_constant(s, dense.weights[0], dense.weights[1], alpha, beta, method="sn(1)").value
    if circular:  # the same certificate: per-channel SN(1) is the dense SN(1), block-diagonal under the DFT
        assert found[0] == pytest.approx(reference, rel=1e-9)
    graph = graph_network([block], input_shape=(4, 6, 6))
    assert isinstance(graph, GraphNetwork)
    low = lipcert.lower_bound(graph, restarts=1, samples=8, seed=seed % 2**31).value
    assert low <= found[0] and low <= reference
    bound = lipcert.lipschitz(graph, "eclipse-fast", path="matrix-free")  # the lesser, through one more rounding step
    norm = 1.0 if short is None else conv_norm(short).value
    stagewise = norm + lipcert.lipschitz(branch, "eclipse-fast", path="matrix-free").value
    assert low <= bound.value <= min(found[0], stagewise) * (1 + 1e-7)
