"""``lipcert demo`` and the bundled model, samples and model card (lipcert/data/)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import onnxruntime
import pytest

import lipcert
from lipcert import datasets
from lipcert import demo
from lipcert.cli import main
from lipcert.errors import DemoDataError
from lipcert.report.render import PLOT_NOTE

EPS = (0.5, 1.0, 1.58)


@pytest.fixture(scope="module")
def card() -> dict:
    return demo.model_card()


@pytest.fixture(scope="module")
def net() -> lipcert.Network:
    return demo.load_model()


@pytest.fixture(scope="module")
def samples() -> demo.Samples:
    return demo.load_samples()


@pytest.fixture(scope="module")
def certification(net, samples) -> lipcert.Certification:
    return lipcert.certify(net, samples.x, samples.y, method="combined", progress=False)


def _onnx_logits(x: np.ndarray) -> np.ndarray:
    with resources.as_file(resources.files("lipcert") / "data" / demo.MODEL_FILE) as path:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def test_bundled_files_are_small_and_match_the_card(card):
    data = resources.files("lipcert") / "data"
    model = (data / demo.MODEL_FILE).read_bytes()
    assert len(model) < 1_000_000
    assert hashlib.sha256(model).hexdigest() == card["sha256"]
    assert hashlib.sha256((data / demo.SAMPLES_FILE).read_bytes()).hexdigest() == card["samples"]["sha256"]
    training = card["training"]
    assert training["command"].startswith("python benchmarks/zoo/train.py --dataset fashion-mnist")
    assert training["train_images"] == 60000 and training["wall_seconds"] > 0 and "seed" in training
    assert card["test"]["n"] == 10000
    for part in ("test", "samples"):
        assert set(card[part]["certified_accuracy"]["combined"]) == {"0.5", "1", "1.58"}


def test_samples_are_the_first_test_images(samples, card):
    assert samples.x.dtype == np.float32 and samples.x.shape == (card["samples"]["n"], 1, 28, 28)
    assert samples.x.min() >= 0 and samples.x.max() <= 1
    assert samples.index.tolist() == list(range(len(samples.y)))
    assert (samples.dataset, samples.split) == ("fashion-mnist", "test")
    assert set(np.unique(samples.y)) == set(range(10))


def test_bundled_model_accuracy_matches_the_card(net, samples, card):
    logits = _onnx_logits(samples.x)
    np.testing.assert_allclose(net(samples.x.astype(np.float64)), logits, rtol=1e-4, atol=1e-4)
    assert float((logits.argmax(1) == samples.y).mean()) == pytest.approx(card["samples"]["clean_accuracy"], abs=1e-4)


def test_certified_accuracy_matches_the_card_and_is_meaningful(certification, card):
    recorded = card["samples"]["certified_accuracy"]["combined"]
    got = certification.certified_accuracy(EPS)
    np.testing.assert_allclose(got, [recorded[f"{e:g}"] for e in EPS], atol=1e-4)
    assert got[1] > 0.4  # the model is trained to be certifiable at L2 radius 1


def test_certified_radii_survive_the_attack(net, samples, certification):
    radius = certification.radii_of("combined")
    ok = certification.correct & (radius > 0)
    x, y, r = samples.x[ok], samples.y[ok], radius[ok]
    at_radius = lipcert.attack(net, x, y, norm=2, eps=r, steps=50, restarts=2, input_range=(0.0, 1.0), progress=False)
    assert not at_radius.success.any()
    # The attack is not vacuous, and the radii are tight: at twice the radius it breaks most inputs.
    beyond = lipcert.attack(net, x, y, norm=2, eps=2 * r, steps=50, restarts=2, input_range=(0.0, 1.0), progress=False)
    assert beyond.success.mean() > 0.5


def test_full_test_set_matches_the_card(shared_data, net, card):
    x, y = datasets.load("fashion-mnist", "test", shared_data, download=False)
    cert = lipcert.certify(net, x, y, method="combined", progress=False)
    assert cert.clean_accuracy == pytest.approx(card["test"]["clean_accuracy"], abs=1e-4)
    recorded = card["test"]["certified_accuracy"]["combined"]
    np.testing.assert_allclose(cert.certified_accuracy(EPS), [recorded[f"{e:g}"] for e in EPS], atol=1e-4)


def test_demo_command_writes_the_full_report(tmp_path, card, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--attack-steps", "20", "--attack-restarts", "1"]) == 0
    for name in ("report.json", "samples.csv", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "report.json").read_text())
    recorded = card["samples"]["certified_accuracy"]["combined"]
    assert record["eps"] == list(EPS)
    np.testing.assert_allclose(record["certified_accuracy"]["combined"], [recorded[f"{e:g}"] for e in EPS], atol=1e-4)
    assert record["clean_accuracy"] == pytest.approx(card["samples"]["clean_accuracy"], abs=1e-4)
    attack = record["attack"]
    assert attack["violations"] == [0, 0, 0]
    assert all(u >= c for u, c in zip(attack["upper_bound"], record["certified_accuracy"]["combined"]))
    assert record["model"]["sha256"] == card["sha256"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and PLOT_NOTE not in page  # matplotlib is a dependency
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and str(out / "report.html") in printed


def test_demo_without_attack(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--no-attack", "--no-plots", "--eps", "1"]) == 0
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["attack"] is None and record["eps"] == [1.0]
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png" not in page and PLOT_NOTE not in page


@pytest.mark.parametrize("load", [demo.load_model, demo.load_samples])
def test_a_corrupted_bundled_file_is_reported(monkeypatch, load):
    monkeypatch.setattr(demo, "model_card", lambda: {"sha256": "0" * 64, "samples": {"sha256": "0" * 64}})
    with pytest.raises(DemoDataError, match="does not match the sha256"):
        load()
