"""Normalized last layers (rows of unit norm, LLN): loaded from torch and ONNX, margins bounded by ||w_i - w_j||."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipcert
from lipcert.bounds.lower import pattern_bound
from lipcert.rounding import INFLATION

orthogonium_layers = pytest.importorskip("orthogonium.layers")
orthogonium_acts = pytest.importorskip("orthogonium.layers.custom_activations")
torchlip = pytest.importorskip("deel.torchlip")


class NormalizedLinear(nn.Linear):
    """Last-layer normalization written in forward: logits = (W / ||rows of W||) x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1), self.bias)


def orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


def lln_model(gen: torch.Generator, classes: int = 10, width: int = 16) -> nn.Module:
    """An exactly 1-Lipschitz backbone (orthogonal maps, MaxMin, GroupSort-4) and a normalized last layer."""
    net = nn.Sequential(nn.Linear(width, width), orthogonium_acts.MaxMin(), nn.Linear(width, width),
                        torchlip.GroupSort(4), NormalizedLinear(width, classes)).double()
    with torch.no_grad():
        net[0].weight.copy_(orthogonal(width, gen))
        net[2].weight.copy_(orthogonal(width, gen))
        net[4].weight.copy_(torch.randn(classes, width, generator=gen, dtype=torch.float64))
        net[4].bias.zero_()
    return net


def row_distances(w: torch.Tensor) -> np.ndarray:
    return torch.cdist(w, w).numpy()


def test_pairwise_constants_are_the_row_distances(seed: int) -> None:
    """Behind a 1-Lipschitz backbone Lip(f_i - f_j) = ||w_i - w_j|| (<= 2), while the whole logit vector has
    Lip(f) = ||W||_2 > 1: 'each output 1-Lipschitz' is not 'the model 1-Lipschitz'."""
    gen = torch.Generator().manual_seed(seed)
    module = lln_model(gen)
    net = lipcert.load(module, input_shape=(16,))
    w = F.normalize(module[4].weight.detach(), dim=1)
    torch.testing.assert_close(net.weights[-1].norm(dim=1), torch.ones(10, dtype=torch.float64))
    bound = lipcert.lipschitz(net)
    dist = row_distances(w)
    off = ~np.eye(10, dtype=bool)
    ratio = bound.pairwise()[off] / dist[off] / (1 + INFLATION)
    assert np.all(ratio >= 1 - 1e-12) and np.all(ratio <= 1 + 1e-9)
    assert np.all(bound.pairwise()[off] <= 2 * (1 + 2 * INFLATION))
    spectral = float(torch.linalg.matrix_norm(w, ord=2))
    assert spectral > 1.2
    assert bound.value / (1 + INFLATION) == pytest.approx(spectral, rel=1e-9)
    assert pattern_bound(net) == pytest.approx(spectral, rel=1e-9)  # the global bound is exact


def test_radii_use_the_row_distances_and_survive_pgd(rng: np.random.Generator) -> None:
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    module = lln_model(gen)
    net = lipcert.load(module, input_shape=(16,))
    x = torch.as_tensor(rng.normal(size=(32, 16)))
    y = net(x).argmax(dim=1).numpy()
    cert = lipcert.certify(net, x, y, norm=2)
    logits = net(x).numpy()
    dist = row_distances(F.normalize(module[4].weight.detach(), dim=1))
    for i in range(len(y)):
        others = [j for j in range(10) if j != y[i]]
        ideal = min((logits[i, y[i]] - logits[i, j]) / dist[y[i], j] for j in others)
        assert cert.radius[i] <= ideal and cert.radius[i] >= ideal * (1 - 1e-6)
    hit = lipcert.attack(net, x, y, norm=2, eps=np.maximum(cert.radius, 1e-12), steps=30, restarts=2)
    assert not np.any(hit.success & cert.correct)


def test_library_and_onnx_normalized_heads_load(tmp_path: Path, seed: int) -> None:
    """orthogonium's UnitNormLinear (a parametrization, float32) and an ONNX export of the hand-written head."""
    gen = torch.Generator().manual_seed(seed)
    module = nn.Sequential(nn.Linear(8, 8), orthogonium_acts.MaxMin(), orthogonium_layers.UnitNormLinear(8, 4))
    with torch.no_grad():
        module[0].weight.copy_(orthogonal(8, gen).float())
    net = lipcert.load(module, input_shape=(8,))
    torch.testing.assert_close(net.weights[-1].norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)
    exported = lln_model(gen).float()
    torch.onnx.export(exported, torch.randn(1, 16), str(tmp_path / "lln.onnx"), dynamo=False, opset_version=17)
    from_onnx = lipcert.load(tmp_path / "lln.onnx")
    w = F.normalize(exported[4].weight.detach().double(), dim=1)
    off = ~np.eye(10, dtype=bool)
    ratio = lipcert.lipschitz(from_onnx).pairwise()[off] / row_distances(w)[off]
    assert np.all(np.abs(ratio - 1) <= 1e-5)  # float32 weights: orthogonal to ~1e-7
    assert math.isclose(float(from_onnx.weights[-1].norm(dim=1).max()), 1.0, rel_tol=1e-6)
