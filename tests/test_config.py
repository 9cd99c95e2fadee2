"""alpha-beta-CROWN YAML configs: lipcert certify --config and lipcert vnnlib --config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lipcert.adapters.config import read_config
from lipcert.cli import main
from lipcert.errors import ConfigError

MODEL_PY = textwrap.dedent('''
    import torch.nn as nn

    def mnist_mlp(hidden=32):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
''')

# the shape of alpha-beta-CROWN's exp_configs (e.g. exp_configs/tutorial_examples/custom_model_data_example.yaml)
CONFIG = textwrap.dedent('''
    general:
      device: cpu
      conv_mode: matrix
      complete_verifier: bab
    model:
      name: Customized("mnist_models.py", "mnist_mlp", hidden=32)
      path: weights.pth
    data:
      dataset: MNIST
      mean: [0.1307]
      std: [0.3081]
      start: 0
      end: 20
    specification:
      norm: 2
      epsilon: 0.25
    attack:
      pgd_restarts: 50
    solver:
      batch_size: 1024
      alpha-crown:
        iteration: 100
    bab:
      timeout: 120
''')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "mnist_models.py").write_text(MODEL_PY)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pth")
    path = tmp_path / "exp.yaml"
    path.write_text(CONFIG)
    return path


def test_read_config_maps_fields_and_lists_tuning(config: Path) -> None:
    cfg = read_config(config)
    assert cfg.model == f"{config.parent / 'mnist_models.py'}:mnist_mlp"
    assert cfg.weights == str(config.parent / "weights.pth") and cfg.model_args == {"hidden": 32}
    assert (cfg.dataset, cfg.mean, cfg.std, cfg.n, cfg.norm, cfg.eps) == ("mnist", [0.1307], [0.3081], 20, "2", 0.25)
    assert set(cfg.ignored) == {"general.device", "general.conv_mode", "general.complete_verifier", "attack",
                                "solver", "bab"}
    onnx = config.with_name("onnx.yaml")
    onnx.write_text("model:\n  onnx_path: net.onnx\n  input_shape: [-1, 1, 28, 28]\nspecification:\n  norm: .inf\n"
                    "  vnnlib_path: p.vnnlib\n")
    cfg = read_config(onnx)
    assert (cfg.model, cfg.weights, cfg.input_shape, cfg.norm) == ("net.onnx", None, (1, 28, 28), "inf")


@pytest.mark.parametrize("edit,named", [
    ("data:\n  dataset: CIFAR_SDP\n", "data.dataset 'CIFAR_SDP'"),
    ("model:\n  name: cnn_4layer\n  path: w.pth\n", "built-in model definitions"),
    ("data:\n  dataset: MNIST\n  data_filter_path: f.pth\n  start: 5\n", "data.data_filter_path, data.start=5"),
    ("specification:\n  type: bound\n  robustness_type: runnerup\n",
     "specification.type='bound', specification.robustness_type='runnerup'"),
    ("specification:\n  norm: 1\n", "specification.norm 1"),
    ("- a list\n", "expected a mapping"),
])
def test_unmappable_fields_are_refused_by_name(tmp_path: Path, edit: str, named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("[", r"\[")):
        read_config(path)


def test_certify_with_config_equals_the_flags_and_flags_override(config: Path, shared_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(shared_data / "datasets"), "--method", "naive", "--no-plots"]
    assert main(["certify", "--config", str(config), "--out", str(tmp_path / "a"), *data]) == 0
    assert f"config {config}" in capsys.readouterr().err
    flags = ["--model", f"{config.parent / 'mnist_models.py'}:mnist_mlp",
             "--weights", str(config.parent / "weights.pth"),
             "--model-args", '{"hidden": 32}', "--input-shape", "1,28,28", "--dataset", "mnist", "--mean", "0.1307",
             "--std", "0.3081", "--n", "20", "--norm", "2", "--eps", "0.25"]
    assert main(["certify", *flags, "--out", str(tmp_path / "b"), *data]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["model"]["config"] == str(config) and b["model"]["config"] is None
    assert "config" in (tmp_path / "a" / "report.md").read_text()
    assert (a["n_inputs"], a["eps"], a["norm"]) == (20, [0.25], "2")
    assert a["model"]["network_sha256"] == b["model"]["network_sha256"]
    assert a["certified_accuracy"] == b["certified_accuracy"] and a["lipschitz"]["naive"]["value"] > 0
    # lipcert's own flags win over the config
    assert main(["certify", "--config", str(config), "--out", str(tmp_path / "c"), *data, "--n", "7", "--eps",
                 "0.5,1", "--norm", "inf"]) == 0
    c = json.loads((tmp_path / "c" / "report.json").read_text())
    assert (c["n_inputs"], c["eps"], c["norm"]) == (7, [0.5, 1.0], "inf")


def test_vnnlib_with_config(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shared_data / "models" / "mnistfc"
    one = tmp_path / "one.yaml"
    one.write_text(f"model:\n  onnx_path: {folder / 'mnist-net_256x2.onnx'}\nspecification:\n"
                   f"  vnnlib_path: {folder / 'vnnlib' / 'prop_0_0.03.vnnlib'}\nbab:\n  timeout: 30\n")
    assert main(["vnnlib", "--config", str(one), "--attack-restarts", "1", "--attack-steps", "5"]) == 0
    direct = capsys.readouterr().out.splitlines()[0]
    assert main(["vnnlib", str(folder / "mnist-net_256x2.onnx"), str(folder / "vnnlib" / "prop_0_0.03.vnnlib"),
                 "--attack-restarts", "1", "--attack-steps", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == direct
    csv = tmp_path / "instances.csv"
    csv.write_text("".join(f"mnist-net_256x2.onnx,vnnlib/prop_{i}_0.03.vnnlib,30\n" for i in (0, 1)))
    many = tmp_path / "many.yaml"
    many.write_text(f"general:\n  csv_name: {csv}\nspecification:\n  vnnlib_path_prefix: {folder}\n")
    assert main(["vnnlib", "--config", str(many), "--attack-restarts", "1", "--attack-steps", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == direct and "prop_1_0.03.vnnlib" in out.err
    assert sum(line in ("sat", "unsat", "unknown", "timeout") for line in out.out.splitlines()) == 2
