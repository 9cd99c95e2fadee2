"""benchmarks/zoo/train.py: margin bounds, the GloRo logit, and a one-epoch smoke run end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import lipcert
from lipcert import datasets

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("zoo_train", REPO / "benchmarks" / "zoo" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_train"] = module
    spec.loader.exec_module(module)
    return module


train = _load_script()
SHAPE = (1, 28, 28)


def _dense(model: torch.nn.Sequential, shape: tuple[int, ...] = SHAPE) -> list[torch.Tensor]:
    return [train.dense_weight(m, s).detach().double()
            for m, s in zip(train.affine_layers(model), train.layer_shapes(model, shape))]


def test_gloro_logit_is_max_of_shifted_other_logits():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    pair = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 4.0], [2.0, 4.0, 0.0]])
    aug = train.gloro_logits(logits, torch.tensor([0, 1]), pair, eps=0.5)
    assert aug.shape == (2, 4)
    assert torch.equal(aug[:, :3], logits)
    # label 0: max(0.5 + 0.5*1, 1.0 + 0.5*2) = 2.0; label 1: max(0 + 0.5*1, -1 + 0.5*4) = 1.0
    assert aug[:, 3].tolist() == [2.0, 1.0]


@pytest.mark.parametrize("arch", ["mlp", "conv-small", "conv-deep"])
def test_dense_weight_is_the_layer_map(arch):
    torch.manual_seed(0)
    model = train.build_model(arch, SHAPE)
    z = torch.rand(3, *SHAPE)
    with torch.no_grad():
        for layer, shape, w in zip(train.affine_layers(model), train.layer_shapes(model, SHAPE), _dense(model)):
            assert w.shape[1] == math.prod(shape)
            zin = z.reshape(3, *shape) if isinstance(layer, torch.nn.Conv2d) else z.reshape(3, -1)
            want = train.apply_linear(layer, zin).reshape(3, -1).double()
            torch.testing.assert_close(zin.reshape(3, -1).double() @ w.T, want, rtol=1e-5, atol=1e-5)
            z = torch.relu(layer(zin))


@pytest.mark.parametrize("arch, shape", [("mlp", SHAPE), ("conv-small", (2, 16, 16)), ("conv-deep", (3, 12, 12))])
def test_power_iteration_approaches_the_product_of_spectral_norms_from_below(arch, shape):
    torch.manual_seed(0)
    model = train.build_model(arch, shape)
    bound = train.PowerIterationBound(model, shape, torch.Generator().manual_seed(0))
    ws = _dense(model, shape)
    product = math.prod(math.sqrt(float(torch.linalg.eigvalsh(w @ w.T if w.shape[0] < w.shape[1] else w.T @ w)[-1]))
                        for w in ws[:-1])
    last = ws[-1]
    exact = (last[:, None, :] - last[None, :, :]).norm(dim=-1) * product
    off = ~torch.eye(10, dtype=torch.bool)
    ratios = []
    for _ in range(60):
        pair = bound()
        ratios.append(float((pair.detach().double()[off] / exact[off]).max()))
    assert ratios[-1] <= 1 + 1e-5 and ratios[-1] > 0.97 and ratios[-1] > ratios[5]
    pair[0, 1].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.dim() > 1)


def test_closed_form_bound_equals_lipcerts_rule_and_has_gradients():
    torch.manual_seed(1)
    model = train.build_model("mlp", SHAPE)
    pair = train.ClosedFormBound(model, SHAPE, "gc(1.5)")()
    net = lipcert.Network.from_weights(_dense(model), activation="relu", input_shape=SHAPE)
    want = lipcert.lipschitz(net, "gc(1.5)").pairwise()
    np.testing.assert_allclose(pair.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    pair.sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters() if p.dim() > 1)


def test_conv_deep_keeps_the_resolution_of_sdp_crowns_convdeep():
    model = train.build_model("conv-deep", (3, 32, 32))
    assert [s for s in train.layer_shapes(model, (3, 32, 32))] == [(3, 32, 32), (8, 16, 16), (8, 16, 16),
                                                                     (8, 16, 16), (512,), (100,)]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model)


def test_scheduled_bound_is_exact_every_kth_step_and_calibrated_in_between():
    torch.manual_seed(2)
    shape = (1, 12, 12)
    model = train.build_model("conv-small", shape)
    closed = train.ClosedFormBound(model, shape, "gc(1.5)")
    power = train.PowerIterationBound(model, shape, torch.Generator().manual_seed(0))
    twin = train.PowerIterationBound(model, shape, torch.Generator().manual_seed(0))  # same vectors as `power`
    bound = train.ScheduledBound(closed, power, every=3)
    values = [bound() for _ in range(4)]
    powers = [twin() for _ in range(4)]
    exact = closed().detach()
    off = ~torch.eye(10, dtype=torch.bool)
    for k in (0, 3):  # exact calls
        torch.testing.assert_close(values[k].detach(), exact)
    ratio = exact / powers[0].detach()
    for k in (1, 2):  # calibrated power iteration, ratio from call 0
        torch.testing.assert_close(values[k].detach()[off], (powers[k].detach() * ratio)[off])
    values[1][0, 1].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.dim() > 1)
    with pytest.raises(ValueError, match="bound-every"):
        train.ScheduledBound(closed, power, every=0)


def test_one_epoch_smoke_run_writes_a_loadable_onnx_model(tmp_path, shared_data):
    out = tmp_path / "m.onnx"
    rc = train.main(["--dataset", "fashion-mnist", "--data-dir", str(shared_data), "--arch", "mlp", "--epochs", "1",
                     "--train-limit", "512", "--test-limit", "200", "--samples", "20", "--seed", "3",
                     "--out", str(out)])
    assert rc == 0
    assert 0 < out.stat().st_size < 1_000_000
    x = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    net = lipcert.load(out)
    np.testing.assert_allclose(net(x.astype(np.float64)), ort_out, rtol=1e-4, atol=1e-4)

    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["train_images"] == 512 and len(card["training"]["history"]) == 1
    assert math.isfinite(card["training"]["history"][0]["loss"])
    assert card["training"]["command"].startswith("python benchmarks/zoo/train.py --dataset fashion-mnist")
    assert card["onnx_max_abs_error"] < 1e-4
    assert card["test"]["n"] == 200 and 0 <= card["test"]["clean_accuracy"] <= 1
    assert set(card["test"]["certified_accuracy"]["combined"]) == {"0.5", "1", "1.58"}

    with np.load(tmp_path / "m_samples.npz") as f:
        assert f["x"].dtype == np.uint8 and f["x"].shape == (20, *SHAPE)
        assert f["index"].tolist() == list(range(20)) and str(f["dataset"]) == "fashion-mnist"
        x_test, y_test = datasets.load("fashion-mnist", "test", shared_data, limit=20, download=False)
        np.testing.assert_array_equal(f["x"].astype(np.float32) / 255, x_test)
        np.testing.assert_array_equal(f["y"], y_test)
    assert card["samples"]["n"] == 20


def test_one_epoch_conv_deep_smoke_run_with_a_scheduled_closed_form(tmp_path, shared_data):
    out = tmp_path / "deep.onnx"
    rc = train.main(["--dataset", "fashion-mnist", "--data-dir", str(shared_data), "--arch", "conv-deep",
                     "--epochs", "1", "--batch-size", "64", "--train-limit", "192", "--test-limit", "40",
                     "--subset", "20", "--bound", "lipcert", "--bound-every", "2", "--out", str(out)])
    assert rc == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["bound_every"] == 2 and "exact every 2 steps" in card["training"]["margin_bound"]
    assert card["training"]["history"][0]["closed_form_seconds"] > 0
    assert card["subset"]["n"] == 20 and card["test"]["n"] == 40
    net = lipcert.load(out)
    assert net.widths[0] == 784 and net.widths[1:5] == (1568, 1568, 1568, 392)
