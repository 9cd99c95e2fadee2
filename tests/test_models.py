"""Every third-party model in ../shared/data/models: load, match onnxruntime, accuracy, bounds.

The images are read here with a tiny IDX/CSV reader (independent of lipcert.datasets) and
preprocessed as the data README states: pixels / 255 in [0, 1], then (x - mean) / std, which
lipcert prepends to the network, so every Network here takes raw [0, 1] pixels.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import lipcert
from lipcert import reference_models
from lipcert.bounds.lower import pattern_bound

pytestmark = pytest.mark.data


# --------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic == 2051:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    if magic != 2049:
        raise ValueError(f"{path}: not an IDX image or label file (magic {magic})")
    return np.frombuffer(data, np.uint8, offset=8)


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 1000 MNIST test images (1000, 1, 28, 28) in [0, 1] and their labels."""
    folder = shared_data / "datasets" / "mnist"
    x = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:1000].astype(np.float64) / 255.0
    return x[:, None], read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:1000].astype(np.int64)


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 100 CIFAR-10 test images as (100, 3, 32, 32) in [0, 1] (the CSV is H, W, C) and labels."""
    rows = np.loadtxt(shared_data / "datasets" / "cifar10" / "cifar10_test_first100.csv", delimiter=",",
                      dtype=np.int64)
    x = rows[:, 1:].reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    return x, rows[:, 0]


@pytest.fixture(scope="module")
def manifest(shared_data: Path) -> dict[str, dict[str, Any]]:
    entries = json.loads((shared_data / "manifest.json").read_text())
    return {e["file"]: e for e in entries if e["kind"] == "model"}


ONNX_MODELS = ["models/mnistfc/mnist-net_256x2.onnx", "models/mnistfc/mnist-net_256x4.onnx",
               "models/mnistfc/mnist-net_256x6.onnx", "models/eran_sigmoid_6x200/ffnnSIGMOID__Point_6x200.onnx",
               "models/eran_mnist_6_100/mnist_6_100_nat.onnx", "models/mnist_cnn_a_adv/mnist_a_adv.onnx",
               "models/oval21_cifar_base_kw/cifar_base_kw.onnx",
               "models/eran_cifar_conv_small_pgd/cifar_conv_small_pgd.onnx"]
CONV_MODELS = {"models/mnist_cnn_a_adv/mnist_a_adv.onnx", "models/oval21_cifar_base_kw/cifar_base_kw.onnx",
               "models/eran_cifar_conv_small_pgd/cifar_conv_small_pgd.onnx"}


def _images(entry: dict[str, Any], mnist: tuple[np.ndarray, np.ndarray], cifar: tuple[np.ndarray, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    return mnist if entry["dataset"] == "mnist" else cifar


def _expected_accuracy(entry: dict[str, Any]) -> float:
    return entry["clean_acc_1000"] if entry["clean_acc_1000"] is not None else entry["clean_acc_first100"]


def _load(shared_data: Path, entry: dict[str, Any]) -> lipcert.Network:
    return lipcert.load(shared_data / entry["file"], mean=entry["mean"], std=entry["std"])


def _as_input(net: lipcert.Network, x: np.ndarray) -> np.ndarray:
    """Images (B, C, H, W) in the layout of the network input (the mnistfc nets take 784 x 1)."""
    return x.reshape(len(x), *net.input_shape)


# --------------------------------------------------------------------------- ONNX models
@pytest.mark.parametrize("file", ONNX_MODELS, ids=[Path(f).stem for f in ONNX_MODELS])
def test_onnx_model_matches_onnxruntime_and_its_accuracy(file: str, shared_data: Path, manifest: dict[str, Any],
                                                         mnist: Any, cifar: Any) -> None:
    entry = manifest[file]
    net = _load(shared_data, entry)
    assert net.input_range == (0.0, 1.0)
    assert net.info["conversion_error"] < 1e-4
    x, y = _images(entry, mnist, cifar)
    # onnxruntime on the stated preprocessing, in the model's own layout
    mean = np.asarray(entry["mean"]).reshape(-1, 1, 1)
    std = np.asarray(entry["std"]).reshape(-1, 1, 1)
    session = ort.InferenceSession(str(shared_data / file), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed_batch = isinstance(inp.shape[0], int)
    sample = [1] + [int(d) for d in inp.shape[1:]]
    normalized = ((x[:100] - mean) / std).astype(np.float32)
    if fixed_batch:
        ref = np.concatenate([session.run(None, {inp.name: n.reshape(sample)})[0] for n in normalized])
    else:
        ref = session.run(None, {inp.name: normalized.reshape(100, *sample[1:])})[0]
    got = net(_as_input(net, x[:100]))
    np.testing.assert_allclose(got, ref.reshape(100, -1), atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    # clean accuracy through lipcert's own forward pass
    logits = net(_as_input(net, x))
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy == pytest.approx(_expected_accuracy(entry), abs=1e-9)


MLP_MODELS = [f for f in ONNX_MODELS if f not in CONV_MODELS]


@pytest.mark.parametrize("file", MLP_MODELS, ids=[Path(f).stem for f in MLP_MODELS])
def test_mlp_bounds_above_the_pattern_lower_bound(file: str, shared_data: Path, manifest: dict[str, Any]) -> None:
    net = _load(shared_data, manifest[file])
    naive, fast = lipcert.lipschitz(net, "naive").value, lipcert.lipschitz(net, "eclipse-fast").value
    lower = pattern_bound(net, restarts=2)
    assert naive >= fast * (1 - 1e-9)
    assert fast >= lower > 0


@pytest.mark.slow
@pytest.mark.parametrize("file", ONNX_MODELS, ids=[Path(f).stem for f in ONNX_MODELS])
def test_combined_bound_above_the_pattern_lower_bound(file: str, shared_data: Path, manifest: dict[str, Any]) -> None:
    net = _load(shared_data, manifest[file])
    combined = lipcert.lipschitz(net, "combined").value
    assert lipcert.lipschitz(net, "eclipse-fast").value >= combined * (1 - 1e-9)
    assert combined >= pattern_bound(net, restarts=1) > 0


# --------------------------------------------------------------------------- PyTorch checkpoints
CHECKPOINTS = sorted(f"models/{folder}/{name}" for name, folder in (
    ("mnist_6_100_nat.pth", "eran_mnist_6_100"), ("mnist_a_adv.pth", "mnist_cnn_a_adv"),
    ("cifar_conv_small_pgd.pth", "eran_cifar_conv_small_pgd")))


@pytest.mark.parametrize("file", CHECKPOINTS, ids=[Path(f).stem for f in CHECKPOINTS])
def test_checkpoint_as_module_matches_its_onnx_export(file: str, shared_data: Path, manifest: dict[str, Any],
                                                      mnist: Any, cifar: Any) -> None:
    shape = reference_models.CHECKPOINTS[Path(file).name].input_shape
    with pytest.raises(lipcert.errors.ModelLoadError, match="not a whole pickled module"):
        lipcert.load(shared_data / file, input_shape=shape)  # a state_dict needs its architecture
    model = reference_models.load_checkpoint(shared_data / file)
    entry = manifest[file]
    net = lipcert.load(model, input_shape=shape, mean=entry["mean"], std=entry["std"])
    onnx_net = _load(shared_data, manifest[file.replace(".pth", ".onnx")])
    assert net.widths == onnx_net.widths
    dense, onnx_dense = net.densified(), onnx_net.densified()  # convolutions are operators: compare the matrices
    for a, b in zip(dense.weights + dense.biases, onnx_dense.weights + onnx_dense.biases):
        assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(a.abs().max()))
    x, y = _images(entry, mnist, cifar)
    accuracy = float((net(x).argmax(1) == y).mean())
    assert accuracy == pytest.approx(_expected_accuracy(entry), abs=1e-9)
