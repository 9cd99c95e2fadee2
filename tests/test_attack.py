"""The PGD attack: exact answers on linear models, verification of successes, the soundness check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lipcert
from lipcert.attacks import attack, soundness_violations, verify
from lipcert.errors import InvalidArgumentError, InvalidNormError, InvalidRadiusError, ShapeMismatchError


def linear_problem(rng: np.random.Generator, n: int = 120, d: int = 16, k: int = 4):
    """f(x) = W x + b with labels = predictions: the distance to the decision boundary is exact."""
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    net = lipcert.Network.from_weights([w], [b])
    x = rng.normal(size=(n, d))
    f = x @ w.T + b
    y = f.argmax(axis=1)
    l2 = np.array([min((f[i, y[i]] - f[i, j]) / np.linalg.norm(w[y[i]] - w[j]) for j in range(k) if j != y[i])
                   for i in range(n)])
    linf = np.array([min((f[i, y[i]] - f[i, j]) / np.abs(w[y[i]] - w[j]).sum() for j in range(k) if j != y[i])
                     for i in range(n)])
    return net, x, y, l2, linf


def test_attack_meets_the_exact_distance_of_a_linear_model(rng: np.random.Generator) -> None:
    net, x, y, l2, linf = linear_problem(rng)
    cert = lipcert.certify(net, x, y, method="naive")
    np.testing.assert_allclose(cert.radius, l2, rtol=2e-8)  # exact for one layer, up to the 1e-8 inflation
    assert np.all(cert.radius <= l2)
    assert not attack(net, x, y, norm=2, eps=0.99 * l2).success.any()
    assert attack(net, x, y, norm=2, eps=1.01 * l2, steps=20, restarts=4).success.all()  # untargeted + each class
    assert not attack(net, x, y, norm="inf", eps=0.99 * linf).success.any()
    broken = attack(net, x, y, norm="linf", eps=1.01 * linf, steps=20, restarts=4)
    assert broken.success.all()
    assert np.all(np.abs(broken.adversarial - x).max(axis=1) <= 1.01 * linf)
    assert np.all(broken.margin <= 0)


def test_float64_gradients_give_the_same_verdicts(rng: np.random.Generator) -> None:
    import torch

    net, x, y, l2, _ = linear_problem(rng, n=40)
    for factor, expected in ((0.98, False), (1.02, True)):
        result = attack(net, x, y, norm=2, eps=factor * l2, steps=20, restarts=4, dtype=torch.float64)
        assert np.all(result.success == expected)


def test_verify_checks_ball_box_and_label(rng: np.random.Generator) -> None:
    net, x, y, l2, _ = linear_problem(rng, n=30)
    found = attack(net, x, y, norm=2, eps=1.05 * l2, steps=20, restarts=4)
    assert found.success.all()
    assert verify(net, x, y, found.adversarial, 2, 1.05 * l2).all()
    assert not verify(net, x, y, found.adversarial, 2, 0.9 * l2).any()  # outside a smaller ball
    assert not verify(net, x, y, x, 2, 1.05 * l2).any()  # clean points are not adversarial
    shifted = found.adversarial + 10.0  # far outside any box around the data
    assert not verify(net, x, y, shifted, "inf", 100.0, input_range=(-5.0, 5.0)).any()


def test_attack_stays_in_the_input_range_and_counts_misclassified_inputs(rng: np.random.Generator) -> None:
    w = rng.normal(size=(3, 10))
    net = lipcert.Network.from_weights([w], [np.zeros(3)], input_range=(0.0, 1.0))
    x = rng.uniform(0, 1, size=(200, 10))
    y = (x @ w.T).argmax(axis=1)
    y[:20] = (y[:20] + 1) % 3  # misclassified: broken without moving
    result = attack(net, x, y, norm="inf", eps=0.5, steps=20)
    assert np.all((result.adversarial >= 0) & (result.adversarial <= 1))
    assert result.success[:20].all()
    np.testing.assert_array_equal(result.adversarial[:20], x[:20])
    assert result.robust_accuracy <= 0.9
    zero = attack(net, x, y, norm=2, eps=0.0)
    np.testing.assert_array_equal(zero.success, np.arange(200) < 20)


def test_soundness_check_flags_a_wrong_certificate(rng: np.random.Generator) -> None:
    net, x, y, l2, _ = linear_problem(rng, n=50)
    cert = lipcert.certify(net, x, y, method="naive")
    result = attack(net, x, y, norm=2, eps=1.5 * l2, steps=20)
    assert soundness_violations(cert, result).size == 0 and result.success.any()
    inflated = dataclasses.replace(cert, radii={"naive": 2 * cert.radius})
    np.testing.assert_array_equal(soundness_violations(inflated, result), np.flatnonzero(result.success))
    with pytest.raises(InvalidNormError):
        soundness_violations(lipcert.certify(net, x, y, method="naive", norm="inf"), result)


def test_bad_attack_arguments_raise_named_errors(rng: np.random.Generator) -> None:
    net, x, y, _, _ = linear_problem(rng, n=10)
    with pytest.raises(InvalidRadiusError):
        attack(net, x, y, norm=2, eps=-1.0)
    with pytest.raises(ShapeMismatchError, match="one per input"):
        attack(net, x, y, norm=2, eps=np.ones(3))
    with pytest.raises(InvalidNormError):
        attack(net, x, y, norm=1, eps=0.1)
    with pytest.raises(ShapeMismatchError):
        attack(net, x[:, :5], y, norm=2, eps=0.1)
    with pytest.raises(ShapeMismatchError, match="labels"):
        attack(net, x, y + 10, norm=2, eps=0.1)
    with pytest.raises(InvalidArgumentError, match="restarts"):
        attack(net, x, y, norm=2, eps=0.1, restarts=0)
