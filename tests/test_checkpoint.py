"""State-dict checkpoints with their model class: lipcert.load("module:Class", weights=...) and the CLI flags."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.cli import main
from lipcert.errors import CheckpointMismatchError, ModelLoadError

# auto_LiRPA's examples/vision/models (cnn_4layer, mlp_3layer) as users keep them: a file of classes
MODELS_PY = textwrap.dedent('''
    import torch.nn as nn

    class Flatten(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    def cnn_4layer(in_ch=1, in_dim=8, width=2, linear_size=32):
        return nn.Sequential(
            nn.Conv2d(in_ch, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4 * width, 8 * width, 3, stride=2, padding=1), nn.ReLU(), Flatten(),
            nn.Linear(8 * width * (in_dim // 4) * (in_dim // 4), linear_size), nn.ReLU(), nn.Linear(linear_size, 10))

    class mlp_3layer(nn.Module):
        def __init__(self, in_ch=1, in_dim=8, width=1):
            super().__init__()
            self.fc1 = nn.Linear(in_ch * in_dim * in_dim, 64 * width)
            self.fc2 = nn.Linear(64 * width, 32 * width)
            self.fc3 = nn.Linear(32 * width, 10)

        def forward(self, x):
            x = x.view(x.size(0), -1)
            return self.fc3(self.fc2(self.fc1(x).relu()).relu())
''')


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "my_models.py").write_text(MODELS_PY)
    return folder


def _reference(models_dir: Path, name: str, **kwargs: object) -> torch.nn.Module:
    from lipcert.adapters.checkpoint import import_class

    return import_class(f"my_models.py:{name}", models_dir)(**kwargs).eval()


def _same_function(net: lipcert.Network, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.rand(12, *shape, dtype=torch.float64)
    with torch.no_grad():
        expected = module.double()(x).reshape(len(x), -1)
    torch.testing.assert_close(net(x), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "dataparallel", "eran_list"])
def test_class_with_weights_in_each_checkpoint_layout(models_dir: Path, tmp_path: Path, layout: str) -> None:
    model = _reference(models_dir, "cnn_4layer", in_ch=3, in_dim=8)
    sd = model.state_dict()
    stored = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 7}, "model": {"model": sd, "optimizer": {}},
              "dataparallel": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
              "eran_list": {"acc": 0.9, "state_dict": [sd]}}[layout]
    weights = tmp_path / "w.pth"
    torch.save(stored, weights)
    net = lipcert.load(str(models_dir / "my_models.py") + ":cnn_4layer", weights=weights,
                       model_args={"in_ch": 3, "in_dim": 8}, input_shape=(3, 8, 8))
    _same_function(net, model, (3, 8, 8))
    # the same through a module name on model_path, with positional arguments
    again = lipcert.load("my_models:cnn_4layer", weights=weights, model_args=[3, 8], model_path=models_dir,
                         input_shape=(3, 8, 8))
    assert net.fingerprint() == again.fingerprint()  # the same weights (convolutions kept as operators)


def test_mismatch_names_the_keys(models_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(_reference(models_dir, "mlp_3layer", width=2).state_dict(), weights)
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: fc1.weight \(128, 64\) \(model \(64, 64\)\)"):
        lipcert.load("my_models:mlp_3layer", weights=weights, model_path=models_dir, input_shape=(1, 8, 8))
    with pytest.raises(CheckpointMismatchError, match=r"missing: 0.weight.*unexpected: fc1.weight"):
        lipcert.load("my_models:cnn_4layer", weights=weights, model_path=models_dir, input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match="has no 'Nope'; its torch modules: Flatten, mlp_3layer"):
        lipcert.load("my_models:Nope", weights=weights, model_path=models_dir, input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match="cannot import module 'absent_models'.*--model-path"):
        lipcert.load("absent_models:Net", weights=weights, input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match=r"mlp_3layer\(depth=3\) failed.*--model-args"):
        lipcert.load("my_models:mlp_3layer", weights=weights, model_args={"depth": 3}, model_path=models_dir,
                     input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match="without weights"):
        lipcert.load("my_models:mlp_3layer", model_path=models_dir, input_shape=(1, 8, 8))
    # the bare state_dict file says how to load it, in Python and on the command line
    with pytest.raises(ModelLoadError, match=r"(?s)weights=.*--model .* --weights.*lipcert.load\(module\) also"):
        lipcert.load(weights, input_shape=(1, 8, 8))


def test_module_class_object_and_module_with_weights(models_dir: Path, tmp_path: Path) -> None:
    model = _reference(models_dir, "mlp_3layer")
    weights = tmp_path / "w.pt"
    torch.save({"model_state_dict": model.state_dict()}, weights)
    fresh = type(model)()
    net = lipcert.load(fresh, weights=weights, input_shape=(1, 8, 8))
    _same_function(net, model, (1, 8, 8))
    assert not torch.equal(fresh.fc1.weight, model.fc1.weight)  # the user's module is left as it was
    net2 = lipcert.load(type(model), weights=weights, input_shape=(1, 8, 8))
    assert torch.equal(net2.weights[0], net.weights[0])


def test_cli_model_weights_flags(models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _reference(models_dir, "cnn_4layer", in_ch=1, in_dim=8, width=1)
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    argv = ["bound", "--model", "my_models:cnn_4layer", "--weights", str(weights), "--model-path", str(models_dir),
            "--model-args", '{"width": 1}', "--input-shape", "1,8,8", "--method", "naive", "--json", "--no-lower"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = lipcert.lipschitz(lipcert.load(model, input_shape=(1, 8, 8)), method="naive").value
    assert out["bounds"]["naive"] == pytest.approx(expected, rel=1e-12)
    assert "my_models:cnn_4layer" in out["model"]
    assert main(["inspect", "--no-build", *argv[1:9], "--input-shape", "1,8,8"]) == 0
    assert "Conv2d" in capsys.readouterr().out
    assert main(["bound", "--model", "my_models:cnn_4layer", "--input-shape", "1,8,8"]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["bound", "--weights", str(weights)]) == 2
    assert "--weights needs --model" in capsys.readouterr().err


def test_published_checkpoint_with_reference_class(shared_data: Path) -> None:
    """The auto_LiRPA CNN-A checkpoint (a bare state_dict) with its class named as 'module:function'."""
    path = shared_data / "models/mnist_cnn_a_adv"
    net = lipcert.load("lipcert.reference_models:mnist_cnn_a", weights=path / "mnist_a_adv.pth",
                       input_shape=(1, 28, 28))
    onnx_net = lipcert.load(path / "mnist_a_adv.onnx")
    x = np.random.default_rng(0).random((8, 1, 28, 28))
    torch.testing.assert_close(net(torch.as_tensor(x)), onnx_net(torch.as_tensor(x)), rtol=1e-5, atol=1e-5)
