"""The committed zoo models: they load, reproduce their cards' accuracies, and their radii survive PGD."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.graph import GraphNetwork, Residual
from lipcert import datasets
from lipcert.adapters.rebuild import to_torch
from lipcert.attacks import soundness_violations

REPO = Path(__file__).resolve().parents[1]
MODELS = [REPO / "lipcert" / "data" / "demo_model.onnx"] + sorted((REPO / "benchmarks" / "zoo" / "models").glob("*.onnx"))


def _card(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


RESIDUAL = [p for p in MODELS if "library" in _card(p)]
"""Residual models trained by deel-torchlip / orthogonium or with lipcert's differentiable block certificate
(benchmarks/zoo/train_residual.py); the others are
lipcert's GloRo chain models (benchmarks/zoo/train.py)."""
LARGE = [p for p in MODELS if _card(p)["architecture"].startswith("conv-large")]
"""GloRo ConvLarge models: their dense form (2.4 GB) is left to the benchmarks; tested without dense matrices."""
GLORO = [p for p in MODELS if p not in RESIDUAL and p not in LARGE]


def _subset(card: dict) -> dict:
    """The card's accuracies on the first test images (``subset``; the demo card calls them ``samples``)."""
    return card["subset"] if "subset" in card else card["samples"]


def test_the_zoo_has_every_architecture_trained_with_both_bounds():
    cards = [_card(p) for p in GLORO]
    trained = {(c["architecture"].split(":")[0], c["training"]["margin_bound"].split()[0]) for c in cards}
    assert trained >= {(a, b) for a in ("mlp", "conv-small", "conv-deep") for b in ("lipcert", "power-iteration")}
    assert sum(p.stat().st_size for p in GLORO) < 5_000_000
    assert sum(p.stat().st_size for p in RESIDUAL) < 6_000_000  # the three residual models (4.8 MB + 1 MB)
    assert all(p.stat().st_size < 8_500_000 for p in LARGE)  # ConvLarge: 1.97 M float32 parameters


@pytest.mark.parametrize("path", GLORO, ids=lambda p: p.stem)
def test_model_reproduces_its_card_and_its_radii_survive_the_attack(path, shared_data):
    card = _card(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    net = lipcert.load(path, input_range=(0.0, 1.0))
    assert list(net.widths) == card["widths"]
    subset = _subset(card)
    x, y = datasets.load(card["dataset"], "test", shared_data / "datasets", limit=subset["n"], download=False)
    # The naive bound is cheap on the dense conv layers; the card records its accuracies beside combined's.
    cert = lipcert.certify(net, x, y, method="naive", progress=False)
    assert cert.clean_accuracy == pytest.approx(subset["clean_accuracy"], abs=5e-5)
    recorded = subset["certified_accuracy"]["naive"]
    got = cert.certified_accuracy([float(e) for e in recorded])
    np.testing.assert_allclose(got, list(recorded.values()), atol=5e-5)

    # PGD at each certified input's own (ECLipsE-Fast) radius finds nothing; at three times the radius it breaks some.
    chosen = np.flatnonzero(cert.correct & (cert.radius > 0))[:12]
    sub = lipcert.certify(net, x[chosen], y[chosen], method="eclipse-fast", progress=False)
    at_radius = lipcert.attack(net, x[chosen], y[chosen], norm=2, eps=sub.radius, steps=50, restarts=2, progress=False)
    assert soundness_violations(sub, at_radius).size == 0
    beyond = lipcert.attack(net, x[chosen], y[chosen], norm=2, eps=3 * sub.radius, steps=50, restarts=2, progress=False)
    assert beyond.success.any()


@pytest.mark.parametrize("path", LARGE, ids=lambda p: p.stem)
def test_large_conv_model_is_certified_without_dense_matrices(path, shared_data):
    """ConvLarge: naive on the matrix-free path is at most 1 % above the card's naive (whose path the training run
    chose by the memory then available; frequency bounds on the padded grids exceed the exact conv norms by less
    than 1 % here) and never below it; ECLipsE-Fast runs per frequency, below naive and above the Jacobian norms at
    test images (a rigorous lower bound, up to the rebuild's 1e-12); both bounds' radii survive PGD."""
    card = _card(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    net = lipcert.load(path, input_range=(0.0, 1.0))
    assert list(net.widths) == card["widths"] and all(op is not None for op in net.operators[:4])
    naive = lipcert.lipschitz(net, "naive", path="matrix-free")
    assert naive.extras["path"] == "matrix-free"
    assert card["lipschitz"]["naive"] * (1 - 1e-6) <= naive.value <= 1.01 * card["lipschitz"]["naive"]
    x, y = datasets.load(card["dataset"], "test", shared_data / "datasets", limit=_subset(card)["n"], download=False)
    cert = lipcert.certify(net, x, y, bound=naive, progress=False)
    assert cert.clean_accuracy == pytest.approx(_subset(card)["clean_accuracy"], abs=5e-5)

    chosen = np.flatnonzero(cert.correct & (cert.radius > 0))[:8]
    subs = [lipcert.certify(net, x[chosen], y[chosen], bound=naive, progress=False),
            lipcert.certify(net, x[chosen], y[chosen], method="eclipse-fast", progress=False)]
    fast = subs[1].bounds["eclipse-fast"]
    assert fast.extras["path"] == "per-frequency" and fast.value <= naive.value
    for sub in subs:
        at_radius = lipcert.attack(net, x[chosen], y[chosen], norm=2, eps=sub.radius, steps=50, restarts=2,
                                   progress=False)
        assert soundness_violations(sub, at_radius).size == 0
    beyond = lipcert.attack(net, x[chosen], y[chosen], norm=2, eps=3 * subs[1].radius, steps=50, restarts=2,
                            progress=False)
    assert beyond.success.any()

    module = to_torch(net)
    points = torch.as_tensor(x[:8], dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda z: module(z[None])[0]))(points).flatten(2)
    assert float(torch.linalg.matrix_norm(jac, ord=2).max()) <= fast.value * (1 + 1e-9)


@pytest.mark.parametrize("path", RESIDUAL, ids=lambda p: p.stem)
def test_library_trained_residual_model_reproduces_its_card(path, shared_data):
    card = _card(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    net = lipcert.load(path, input_range=(0.0, 1.0))
    assert isinstance(net, GraphNetwork) and any(isinstance(s, Residual) for s in net.stages)
    x, y = datasets.load("fashion-mnist", "test", shared_data / "datasets", download=False)
    accuracy = float((np.asarray(net(x)).argmax(axis=1) == y).mean())
    assert accuracy == pytest.approx(card["test_clean_accuracy"], abs=3e-4)  # float64 here, float32 when trained
    bound = lipcert.lipschitz(net, "eclipse-fast")
    lower = lipcert.lower_bound(net, restarts=1, samples=16).value
    assert lower <= bound.value
    if card["library"] == "lipcert":  # the training-time product of block certificates is an upper bound too
        assert lower <= card["training_bound"]["global"]
