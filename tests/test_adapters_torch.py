"""torch adapter: layers, dense convolution matrices, normalization, errors, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipcert
from lipcert.adapters.common import check_conversion
from lipcert.adapters.torch import analyze_module, from_module
from lipcert.bounds.lower import pattern_bound
from lipcert.errors import ModelLoadError, UnsupportedOperatorError


def _torch_seed(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(2**31)))


def _outputs(net: lipcert.Network, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return net(x.double()), model.double()(x.double()).reshape(len(x), -1)


# --------------------------------------------------------------------------- activations
ACTIVATIONS = [
    (nn.ReLU(), "relu", 0.0, 1.0), (nn.LeakyReLU(0.2), "leaky_relu(0.2)", 0.2, 1.0), (nn.ELU(), "elu", 0.0, 1.0),
    (nn.Softplus(), "softplus", 0.0, 1.0), (nn.Tanh(), "tanh", 0.0, 1.0), (nn.Sigmoid(), "sigmoid", 0.0, 0.25),
    (nn.SiLU(), "silu", -0.09983933, 1.09983933), (nn.GELU(), "gelu", -0.12890415, 1.12890415),
    (nn.Hardtanh(-0.5, 2.0), "hardtanh(-0.5,2)", 0.0, 1.0), (nn.ReLU6(), "relu6", 0.0, 1.0),
]


@pytest.mark.parametrize("act,name,alpha,beta", ACTIVATIONS, ids=[a[1] for a in ACTIVATIONS])
def test_mlp_with_each_activation(rng: np.random.Generator, act: nn.Module, name: str, alpha: float,
                                  beta: float) -> None:
    _torch_seed(rng)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), act, nn.Linear(12, 8), act, nn.Linear(8, 3)).eval()
    net = lipcert.load(model, input_shape=(2, 3))
    assert net.activation_names == (name, name)
    assert net.widths == (6, 12, 8, 3)
    assert torch.allclose(net.alphas[0], torch.full((12,), alpha, dtype=torch.float64))
    assert torch.allclose(net.betas[1], torch.full((8,), beta, dtype=torch.float64))
    assert torch.equal(net.weights[0], model[1].weight.double())  # float32 weights are kept exactly
    got, expected = _outputs(net, model, torch.randn(20, 2, 3, dtype=torch.float64) * 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert 0 <= net.info["conversion_error"] < 1e-4
    upper = lipcert.lipschitz(net, "combined").value
    assert upper >= pattern_bound(net, restarts=3) * (1 - 1e-9)


# --------------------------------------------------------------------------- convolutions as dense matrices
CONV_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1), dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=1), dict(stride=1, padding=2, dilation=2, groups=3),
    dict(stride=3, padding=1, dilation=1, groups=6),
]


@pytest.mark.parametrize("kw", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv2d_matrix_is_the_convolution_and_its_transpose_the_adjoint(rng: np.random.Generator, kw: dict) -> None:
    _torch_seed(rng)
    conv = nn.Conv2d(6, 6, 3, **kw).double()
    net = from_module(conv, input_shape=(6, 9, 8), dense=True)  # the dense matrix itself
    w, b = net.weights[0], net.biases[0]
    x = torch.randn(5, 6, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
    torch.testing.assert_close(x.reshape(5, -1) @ w.T + b, y.reshape(5, -1), rtol=1e-12, atol=1e-12)
    v = torch.randn(5, *y.shape[1:], dtype=torch.float64)
    # W^T v is conv_transpose2d with the output_padding that restores the input size
    stride, pad, dil = (nn.modules.utils._pair(kw[k]) for k in ("stride", "padding", "dilation"))
    out_pad = [x.shape[2 + i] - ((y.shape[2 + i] - 1) * stride[i] - 2 * pad[i] + dil[i] * 2 + 1) for i in range(2)]
    adjoint = F.conv_transpose2d(v, conv.weight, None, stride, pad, out_pad, kw["groups"], dil)
    torch.testing.assert_close(v.reshape(5, -1) @ w, adjoint.reshape(5, -1), rtol=1e-12, atol=1e-12)


def test_conv1d_and_conv_transpose2d_matrices(rng: np.random.Generator) -> None:
    _torch_seed(rng)
    conv1 = nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2).double()
    net = from_module(conv1, input_shape=(2, 11), dense=True)
    x = torch.randn(4, 2, 11, dtype=torch.float64)
    torch.testing.assert_close(x.reshape(4, -1) @ net.weights[0].T + net.biases[0],
                               conv1(x).detach().reshape(4, -1), rtol=1e-12, atol=1e-12)
    up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1).double()
    net = from_module(up, input_shape=(4, 5, 5), dense=True)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y = up(x)
    w = net.weights[0]
    torch.testing.assert_close(x.reshape(3, -1) @ w.T + net.biases[0], y.reshape(3, -1), rtol=1e-12, atol=1e-12)
    v = torch.randn(3, *y.shape[1:], dtype=torch.float64)  # the adjoint of a transposed convolution is conv2d
    torch.testing.assert_close(v.reshape(3, -1) @ w, F.conv2d(v, up.weight, None, 2, 1).reshape(3, -1),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- CNN layers and normalization
class Normalized(nn.Module):
    """A CNN with normalization written as arithmetic in forward, BatchNorm and pooling."""

    def __init__(self, with_norm: bool) -> None:
        super().__init__()
        self.with_norm = with_norm
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.19, 0.21]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_norm:
            x = (x - self.mean) / self.std
        x = self.pool(F.elu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_mean_std_prepended_equals_normalization_in_the_model(rng: np.random.Generator) -> None:
    _torch_seed(rng)
    inside = Normalized(with_norm=True)
    with torch.no_grad():
        inside.bn.running_mean.uniform_(-1, 1)
        inside.bn.running_var.uniform_(0.5, 2)
    inside.eval()
    outside = Normalized(with_norm=False)
    outside.load_state_dict(inside.state_dict())
    outside.eval()
    a = lipcert.load(inside, input_shape=(3, 8, 8), dense=True)  # the dense matrices are compared
    b = lipcert.load(outside, input_shape=(3, 8, 8), mean=[0.49, 0.48, 0.45], std=[0.2, 0.19, 0.21], dense=True)
    assert a.widths == b.widths == (192, 96, 4)
    for wa, wb in zip(a.weights + a.biases, b.weights + b.biases):
        torch.testing.assert_close(wa, wb, rtol=1e-6, atol=1e-6)
    # W1 columns of channel c are divided by std_c
    plain = lipcert.load(outside, input_shape=(3, 8, 8), dense=True)
    ratio = (b.weights[0] / plain.weights[0]).reshape(96, 3, 64)
    finite = torch.isfinite(ratio)
    for c, s in enumerate([0.2, 0.19, 0.21]):
        torch.testing.assert_close(ratio[:, c][finite[:, c]], torch.full_like(ratio[:, c][finite[:, c]], 1 / s))
    assert b.info["preprocessing"] == {"mean": [0.49, 0.48, 0.45], "std": [0.2, 0.19, 0.21]}
    assert b.input_range == (0.0, 1.0) and "raw inputs" in b.info["input_space"]
    assert plain.input_range == (0.0, 1.0) and "(assumed)" in plain.info["input_space"]
    assert lipcert.load(outside, input_shape=(3, 8, 8), input_range=None).input_range is None


def test_module_layers_and_global_pooling(rng: np.random.Generator) -> None:
    _torch_seed(rng)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4), nn.SiLU(),
        nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Softplus(beta=2.0), nn.ZeroPad2d((1, 0, 0, 1)),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Dropout(0.5), nn.Identity(),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5), nn.Hardsigmoid(),
        nn.Linear(5, 2)).eval()
    conv = analyze_module(model, input_shape=(1, 6, 6))
    kinds = [(layer.op_type, layer.kind) for layer in conv.layers]
    assert ("BatchNorm2d", "affine") in kinds and ("SiLU", "activation") in kinds and ("Dropout", "affine") in kinds
    net = lipcert.load(model, input_shape=(1, 6, 6))
    assert net.activation_names == ("silu", "softplus(2)", "hardtanh(0,1)")
    got, expected = _outputs(net, model, torch.rand(10, 1, 6, 6))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_pickled_whole_module_file_and_state_dict_file(tmp_path: Path, rng: np.random.Generator) -> None:
    _torch_seed(rng)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).eval()
    whole = tmp_path / "model.pt"
    torch.save(model, whole)
    net = lipcert.load(whole, input_shape=(4,))
    assert torch.equal(net.weights[1], model[3].weight.double())
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    with pytest.raises(ModelLoadError, match=r"(?s)holds a state_dict.*weights=.*--weights.*lipcert.load\(module\)"):
        lipcert.load(weights, input_shape=(4,))
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, checkpoint)
    with pytest.raises(ModelLoadError, match=r"holds a checkpoint"):
        lipcert.load(checkpoint, input_shape=(4,))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="not a readable torch file"):
        lipcert.load(broken, input_shape=(4,))


# --------------------------------------------------------------------------- unsupported models and errors
class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.LPPool2d(1, 2)  # p = 1: not an L2-norm pooling
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.relu(self.conv(x))
        x = self.pool(x).flatten(1)
        return torch.cat([self.fc1(x), self.fc2(x), x], dim=1)  # three branches: still refused


def test_lppool_and_concat_are_all_reported_beside_a_residual() -> None:
    conv = analyze_module(Residual(), input_shape=(2, 4, 4))  # the residual add is supported (adapters/residual.py)
    assert [(i.op_type, i.name) for i in conv.issues] == [("LPPool2d", "pool"), ("cat", "cat")]
    with pytest.raises(UnsupportedOperatorError, match=r"(?s)2 operators.*LPPool2d node 'pool': LPPool2d with norm_type=1"
                                                       r".*cat node 'cat'"):
        lipcert.load(Residual(), input_shape=(2, 4, 4))


def test_training_mode_and_missing_shape_are_clear_errors() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(UnsupportedOperatorError, match="BatchNorm1d node '1': it is in training mode.*model.eval"):
        lipcert.load(model, input_shape=(3,))
    with pytest.raises(ModelLoadError, match=r"input_shape is required.*input_shape=\(1, 28, 28\)"):
        lipcert.load(model.eval())
    with pytest.raises(ModelLoadError, match=r"fails on an input of shape \(1, 5\)"):
        lipcert.load(model, input_shape=(5,))
    with pytest.raises(TypeError, match="unknown option"):
        lipcert.load(model, input_shape=(3,), tolerance=1.0)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on the input cannot be traced
            return self.fc(x)
        return x


def test_untraceable_module() -> None:
    with pytest.raises(ModelLoadError, match="torch.fx could not trace Branchy"):
        lipcert.load(Branchy(), input_shape=(3,))


def test_conversion_check_raises_on_a_mismatch(rng: np.random.Generator) -> None:
    _torch_seed(rng)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    net = lipcert.load(model, input_shape=(4,))

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(x, dtype=torch.float32)).double().numpy() * 1.01

    with pytest.raises(ModelLoadError, match="conversion check failed.*differs from the original model by up to"):
        check_conversion(net, reference, input_range=(0.0, 1.0), samples=8, rtol=1e-4, source="test")
    found = check_conversion(net, lambda x: reference(x) / 1.01, input_range=None, samples=8, rtol=1e-4, source="t")
    assert found["conversion_error"] < 1e-5


def test_dense_size_limit_for_a_large_convolution() -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 64 * 64, 10))
    size = 8 * (64 * 64 * 64) * (3 * 64 * 64) + 8 * 10 * 64**3
    with pytest.raises(ModelLoadError, match=rf"about {size / 1e9:.3g} GB.*over the limit of 4 GB.*max_dense_bytes="):
        lipcert.load(model.eval(), input_shape=(3, 64, 64), dense=True)
    assert math.isclose(size / 1e9, 25.79, rel_tol=1e-3)
    # by default the convolutions stay operators (nothing dense but the last layer), and naive runs matrix-free
    small = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 2, 1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 64 * 64, 10)).eval()
    net = lipcert.load(small, input_shape=(3, 64, 64))
    assert [op is not None for op in net.operators] == [True, True, False] and net.dense_nbytes > 25e9
    bound = lipcert.lipschitz(net, "naive", max_bytes=4e9)
    assert bound.extras["path"] == "matrix-free" and bound.value > 0


def test_cli_inspect_on_pickled_modules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert.cli import main

    good = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    torch.save(good.eval(), tmp_path / "good.pt")
    assert main(["inspect", str(tmp_path / "good.pt"), "--input-shape", "1,7,7"]) == 0
    text = capsys.readouterr().out
    assert "leaky_relu(0.1) [0.1, 1]" in text and "W1: 18 x 49" in text and "conversion check: max" in text
    bad = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LPPool2d(1, 2), nn.Flatten(), nn.Softmax(dim=1))
    torch.save(bad.eval(), tmp_path / "bad.pt")
    assert main(["inspect", str(tmp_path / "bad.pt"), "--input-shape", "1,6,6"]) == 2
    text = capsys.readouterr().out
    assert "2 unsupported operators" in text and "LPPool2d node '1'" in text and "Softmax node '3'" in text


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        F.relu(x, inplace=True)  # the result is only visible through x: a traced graph would skip it
        return self.b(x)


def test_in_place_activation_whose_input_is_reused_is_not_dropped() -> None:
    with pytest.raises(UnsupportedOperatorError, match="relu node 'relu': it works in place"):
        lipcert.load(InPlace(), input_shape=(3,))
