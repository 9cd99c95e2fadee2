"""One way to call every verb: model first (Network, path or torch module), keyword-only norm and eps,
and every certification result answering :class:`lipcert.Certificates` consistently."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert import bounds
from lipcert.adapters import lirpa
from lipcert.errors import EpsNotInGridError, ModelLoadError, NotANetworkError


def _linear(rng: np.random.Generator) -> tuple[torch.nn.Module, lipcert.Network, np.ndarray, np.ndarray]:
    """A linear classifier as a torch module and as a Network, with inputs it classifies correctly or not."""
    w, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4)).double().eval()
    with torch.no_grad():
        module[0].weight.copy_(torch.as_tensor(w))
        module[0].bias.copy_(torch.as_tensor(b))
    net = lipcert.Network.from_weights([w], [b])
    x = rng.uniform(-1, 1, (12, 6))
    y = (x @ w.T + b).argmax(axis=1)
    y[:2] = (y[:2] + 1) % 4  # two misclassified inputs
    return module, net, x, y


def test_a_torch_module_works_in_every_verb_with_inputs(rng: np.random.Generator) -> None:
    module, net, x, y = _linear(rng)
    a, b = lipcert.certify(module, x, y, method="naive"), lipcert.certify(net, x, y, method="naive")
    np.testing.assert_allclose(a.radius, b.radius, rtol=1e-12)
    batch = lipcert.certify_batch(module, x, y, eps=0.1, method="naive")
    np.testing.assert_allclose(batch.radius, b.radius, rtol=1e-12)
    hit = lipcert.attack(module, x, y, norm=2, eps=0.5, steps=5, restarts=1)
    assert hit.success[:2].all()  # misclassified inputs are broken by themselves
    assert lipcert.attack(module, x, y, norm=2, eps=0.99 * b.radius, steps=5, restarts=1).success.sum() == 2
    ver = lirpa.verify(module, x, y, eps=[0.05], norm=2)
    assert np.array_equal(ver.verified, lirpa.verify(net, x, y, eps=[0.05], norm=2).verified)
    out = lipcert.combine(module, x, y, eps=[0.05], norm=2, method="naive")
    assert np.array_equal(out.by_lipcert[0], b.certified(0.05))


def test_a_torch_module_needs_an_input_shape_in_the_bound_verbs(rng: np.random.Generator) -> None:
    module, net, _, _ = _linear(rng)
    for verb in (lipcert.lipschitz, lipcert.lower_bound):
        with pytest.raises(ModelLoadError, match="input_shape="):
            verb(module)
    assert lipcert.lipschitz(module, "naive", input_shape=(6,)).value == pytest.approx(
        lipcert.lipschitz(net, "naive").value, rel=1e-12)
    assert lipcert.lower_bound(module, input_shape=(6,), seed=1).value == pytest.approx(
        lipcert.lower_bound(net, seed=1).value, rel=1e-12)
    with pytest.raises(NotANetworkError, match=r"lipcert\.load"):
        bounds.lipschitz(module)
    with pytest.raises(NotANetworkError, match=r"lipcert\.load"):
        bounds.lower_bound(module)
    with pytest.raises(NotANetworkError, match="check_certificate"):
        bounds.check_certificate(module, lipcert.lipschitz(net))


def test_vnnlib_check_needs_the_onnx_file(rng: np.random.Generator, tmp_path: Path) -> None:
    module, net, _, _ = _linear(rng)
    prop = tmp_path / "prop.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(6))
                    + "".join(f"(declare-const Y_{j} Real)\n" for j in range(4))
                    + "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))\n" for i in range(6))
                    + "(assert (>= Y_1 Y_0))\n")
    for model in (module, net):
        with pytest.raises(ModelLoadError, match="ONNX file"):
            lipcert.vnnlib_check(model, prop)


def test_norm_and_eps_are_keyword_only(rng: np.random.Generator) -> None:
    _, net, x, y = _linear(rng)
    calls = [lambda: lipcert.attack(net, x, y, 2, 0.1), lambda: lipcert.certify(net, x, y, 2),
             lambda: lipcert.certify_batch(net, x, y, 0.1), lambda: lipcert.combine(net, x, y, [0.1]),
             lambda: lirpa.verify(net, x, y, [0.1]), lambda: lirpa.certified_radius(net, x, y, 2),
             lambda: lipcert.lower_bound(net, 8)]
    for call in calls:
        with pytest.raises(TypeError):
            call()


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_every_result_answers_the_protocol_and_they_agree_on_a_linear_model(rng: np.random.Generator,
                                                                            norm: str) -> None:
    """One layer: CROWN's margin bound is exact, and so is lipcert's L2 radius, so in L2 every result certifies
    the same inputs at eps away from the radii; in L-infinity lipcert's radius (the L2 one / sqrt(d)) is below
    the exact one, so whatever lipcert certifies, every result certifies."""
    exact = norm == "2"
    _, net, x, y = _linear(rng)
    cert = lipcert.certify(net, x, y, norm=norm, method="naive")
    r = cert.radius[cert.correct]
    grid = [float(np.quantile(r, q)) * (1 + 1e-4) for q in (0.25, 0.75)]  # no radius within 1e-4 of an eps
    assert np.all(np.abs(r[:, None] / np.asarray(grid)[None, :] - 1) > 5e-5)
    results = {
        "certify": cert,
        "certify_batch": lipcert.certify_batch(net, x, y, eps=grid[0], norm=norm, method="naive"),
        "combine": lipcert.combine(net, x, y, eps=grid, norm=norm, method="naive"),
        "verify": lirpa.verify(net, x, y, eps=grid, norm=norm),
        "certified_radius": lirpa.certified_radius(net, x, y, norm=norm, steps=20),
    }
    for name, res in results.items():
        assert isinstance(res, lipcert.Certificates), name
        assert res.radius.shape == (len(y),) and res.seconds > 0, name
        assert not res.radius[~cert.correct].any(), name  # nothing proven for a misclassified input
        for e in grid:
            mask = res.certified(e)
            assert mask.shape == (len(y),) and mask.dtype == bool, name
            assert np.all(mask >= cert.certified(e)), name
            if exact:
                np.testing.assert_array_equal(mask, cert.certified(e), err_msg=name)
            assert np.all(res.radius[mask] >= e), name  # a certified input has a radius >= eps
            assert np.array_equal(res.certified_accuracy(e), [mask.mean()]), name
        assert np.all(res.certified_accuracy(grid) >= cert.certified_accuracy(grid)), name
        if exact:
            np.testing.assert_allclose(res.certified_accuracy(grid), cert.certified_accuracy(grid), err_msg=name)
    np.testing.assert_allclose(results["certify_batch"].radius, cert.radius, rtol=1e-12)
    ok, search = cert.correct, results["certified_radius"]
    assert np.all(search.radius[ok] >= cert.radius[ok] * (1 - 2.0**-19))  # CROWN proves at least lipcert's radius
    assert np.all(results["combine"].radius >= cert.radius)
    if exact:  # the bisection brackets the exact radius to 2**-20, the 1e-8 inflation aside
        assert np.all(search.radius[ok] <= cert.radius[ok] * (1 + 1e-7))
        assert np.all(results["verify"].radius <= cert.radius * (1 + 1e-9))
        np.testing.assert_array_equal(results["combine"].radius, cert.radius)
    for res in (results["combine"], results["verify"]):
        with pytest.raises(EpsNotInGridError, match="verified eps"):
            res.certified(0.5 * grid[0])
        with pytest.raises(EpsNotInGridError):
            res.certified_accuracy([grid[0], 0.5 * grid[0]])


def test_the_public_names() -> None:
    assert {"certify", "certify_batch", "combine", "attack", "lipschitz", "lower_bound", "vnnlib_check", "load",
            "Certificates", "Network", "errors", "LipcertError"} <= set(lipcert.__all__)
    assert not {"METHODS", "Activation", "get_activation", "Rule", "random_nets"} & set(lipcert.__all__)
    assert all(hasattr(lipcert, name) for name in lipcert.__all__)
    assert math.isclose(lipcert.lipschitz(lipcert.Network.from_weights([[[3.0, 4.0]]])).value, 5.0, rel_tol=1e-7)
