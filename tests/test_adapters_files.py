"""adapters.files.read: one dispatch of model files for lipcert.load and the rebuilt torch module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.adapters.files import read
from lipcert.adapters.rebuild import to_torch
from lipcert.errors import InvalidWeightsError, ModelLoadError
from lipcert.npz import save_npz


def _mlp(rng: np.random.Generator) -> lipcert.Network:
    return lipcert.Network.from_weights([rng.standard_normal((6, 4)), rng.standard_normal((3, 6))],
                                        [rng.standard_normal(6), rng.standard_normal(3)], activation="tanh")


def _max_difference(net: lipcert.Network, module: torch.nn.Module, rng: np.random.Generator) -> float:
    x = rng.uniform(0.0, 1.0, (5, *net.input_shape))
    with torch.no_grad():
        return float(np.abs(module(torch.as_tensor(x)).numpy() - net(x)).max())


@pytest.mark.parametrize("name, match", [("absent.onnx", "no such model file"),
                                         ("weights.txt", r"unsupported model file 'weights.txt': expected .onnx, "
                                                         r"\.pt, \.pth or \.npz")])
def test_load_and_rebuild_give_the_same_file_errors(tmp_path: Path, name: str, match: str) -> None:
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("W1 = [[1]]")
    for call in (read, lipcert.load, to_torch):
        with pytest.raises(ModelLoadError, match=match):
            call(path)


def test_npz_has_no_conversion_and_rebuilds_as_its_dense_chain(tmp_path: Path, rng: np.random.Generator) -> None:
    net = _mlp(rng)
    path = tmp_path / "net.npz"
    save_npz(net, path)
    found = read(path)
    assert (found.format, found.conversion) == ("npz", None)
    loaded = found.network()
    assert all(torch.equal(a, b) for a, b in zip(loaded.weights, net.weights))
    assert _max_difference(loaded, to_torch(path), rng) < 1e-12
    with pytest.raises(ModelLoadError, match="mean/std and loading options are not supported for .npz"):
        to_torch(path, mean=0.5)


def test_npz_options_are_refused_before_the_file_is_read(tmp_path: Path) -> None:
    import zipfile

    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as archive:  # an .npz archive whose array is not an .npy payload
        archive.writestr("W1.npy", b"not an array")
    with pytest.raises(ModelLoadError, match="mean/std and loading options are not supported"):
        lipcert.load(broken, std=0.5)
    with pytest.raises(InvalidWeightsError, match="weight 1 is not a numeric array"):
        lipcert.load(broken)
    broken.write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="not a readable .npz file"):
        lipcert.load(broken)


def test_module_file_saved_in_training_mode_is_read_in_eval_mode(tmp_path: Path,
                                                                  rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 5), torch.nn.Dropout(0.5), torch.nn.ReLU(),
                                torch.nn.Linear(5, 3)).train()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    found = read(path, input_shape=(2, 4))
    assert found.format == "torch" and found.conversion is not None and not found.conversion.issues
    net = found.network(mean=0.25, std=0.5)
    assert net.info["source"] == str(path) and net.info["conversion_error"] is not None
    assert _max_difference(net, to_torch(path, input_shape=(2, 4), mean=0.25, std=0.5), rng) < 1e-12
    again = lipcert.load(path, input_shape=(2, 4), mean=0.25, std=0.5)
    assert all(torch.equal(a, b) for a, b in zip(again.weights, net.weights))
