"""MaxMin, GroupSort-k, FullSort and Householder through the |.| rewrite (lipcert/sorting.py, bounds/abs_layer.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert import sorting
from lipcert.activations import abs_or_identity, get_activation
from lipcert.bounds.certificate import check_certificate
from lipcert.bounds.lower import jacobian_bound, lower_bound, pattern_bound
from lipcert.errors import ShapeMismatchError, UnknownActivationError, UnsupportedSlopesError
from lipcert.npz import load_npz, save_npz
from lipcert.rounding import INFLATION

CLOSED_FORMS = ("naive", "sn", "gc", "shift", "gcs", "combined", "greedy")


def identity_chain(stages: list[sorting.Stage], n: int) -> lipcert.Network:
    eye = torch.eye(n, dtype=torch.float64)
    return sorting.chain([eye, eye], None, [stages])


def activation_stages(kind: str, n: int, gen: torch.Generator) -> list[sorting.Stage]:
    if kind == "householder":
        return sorting.householder_stages(2 * math.pi * torch.rand(n // 2, generator=gen, dtype=torch.float64))
    if kind == "maxmin":
        return sorting.maxmin_halves_stages(n)
    return sorting.groupsort_stages(n, {"groupsort2": 2, "groupsort4": 4, "fullsort": None}[kind])


@pytest.mark.parametrize("k", range(1, 11))
def test_batcher_network_sorts_every_zero_one_input(k: int) -> None:
    """0-1 principle: a comparator network sorts every input iff it sorts every 0-1 input."""
    stages = sorting.batcher_stages(k)
    for stage in stages:
        touched = [c for pair in stage for c in pair]
        assert len(touched) == len(set(touched))
    for bits in itertools.product((0, 1), repeat=k):
        x = list(bits)
        for stage in stages:
            for lo, hi in stage:
                if x[lo] > x[hi]:
                    x[lo], x[hi] = x[hi], x[lo]
        assert x == sorted(x)
    assert len(sorting.batcher_stages(4)) == 3


def test_rewrite_computes_the_libraries_activations(seed: int) -> None:
    """The chain of stages equals deel-torchlip's GroupSort2/GroupSort(4)/FullSort/HouseHolder and orthogonium's MaxMin."""
    torchlip = pytest.importorskip("deel.torchlip")
    activations = pytest.importorskip("orthogonium.layers.custom_activations")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    house = torchlip.HouseHolder(8).double()
    with torch.no_grad():
        house.theta.copy_(2 * math.pi * torch.rand(4, generator=gen, dtype=torch.float64))
    cases = [(torchlip.GroupSort2(), sorting.groupsort_stages(8, 2)),
             (torchlip.GroupSort(4), sorting.groupsort_stages(8, 4)),
             (torchlip.FullSort(), sorting.groupsort_stages(8, None)),
             (activations.MaxMin(), sorting.maxmin_halves_stages(8)),
             (house, sorting.householder_stages(house.theta))]
    for module, stages in cases:
        with torch.no_grad():
            expected = module(x)
        torch.testing.assert_close(identity_chain(stages, 8)(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["maxmin", "groupsort2", "groupsort4", "fullsort", "householder"])
def test_single_activation_layer_is_bounded_at_one(kind: str, seed: int) -> None:
    """A single MaxMin / GroupSort / Householder layer: every closed form gives 1 to 1e-9 before the
    final rounding inflation (1 + 1e-8), and never less than 1."""
    n = 6 if kind == "fullsort" else 8
    net = identity_chain(activation_stages(kind, n, torch.Generator().manual_seed(seed)), n)
    assert pattern_bound(net) == pytest.approx(1.0, abs=1e-12)
    for method in CLOSED_FORMS:
        value = lipcert.lipschitz(net, method=method).value
        assert value >= 1.0
        assert value / (1 + INFLATION) - 1 <= 1e-9, (method, value)


@pytest.mark.parametrize("kind", ["maxmin", "groupsort2", "groupsort4", "fullsort", "householder"])
def test_random_nets_stay_above_the_lower_bounds(kind: str, seed: int) -> None:
    """Gaussian nets with the activation between affine maps (biases drawn): every closed form is at
    least the pattern and Jacobian lower bounds, and combined is at most naive."""
    gen = torch.Generator().manual_seed(seed)
    for widths in ([5, 8, 8, 3], [6, 4, 4, 4, 2]):
        ws = [torch.randn(b, a, generator=gen, dtype=torch.float64) / math.sqrt(a) for a, b in itertools.pairwise(widths)]
        bs = [torch.randn(b, generator=gen, dtype=torch.float64) for b in widths[1:]]
        net = sorting.chain(ws, bs, [activation_stages(kind, n, gen) for n in widths[1:-1]])
        low = lower_bound(net, restarts=4, samples=64, seed=seed)
        values = {m: lipcert.lipschitz(net, method=m).value for m in CLOSED_FORMS}
        assert min(values.values()) >= low.value, (widths, values, low)
        assert values["combined"] <= values["naive"]


def test_jacobian_of_the_rewrite_is_the_forward_pass_jacobian(seed: int) -> None:
    """The activation's derivative gives the Jacobian of the real forward pass (autograd)."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randn(3, 8, generator=gen, dtype=torch.float64)]
    net = sorting.chain(ws, None, [sorting.groupsort_stages(8, 4)])
    x = torch.randn(5, dtype=torch.float64, generator=gen)
    auto = torch.autograd.functional.jacobian(lambda t: net(t[None])[0], x)
    h, jac = x, None
    slopes = []
    for k, act in enumerate(net.activations):
        z = net.weights[k] @ h + net.biases[k]
        slopes.append(act.derivative(z[None])[0])  # type: ignore[misc]
        h = act(z[None])[0]
    jac = net.weights[-1]
    for k in range(len(slopes) - 1, -1, -1):
        jac = (jac * slopes[k][None, :]) @ net.weights[k]
    torch.testing.assert_close(jac, auto, rtol=0, atol=1e-12)
    value, _ = jacobian_bound(net, samples=32, steps=0)
    assert value <= lipcert.lipschitz(net, method="combined").value


def test_abs_neurons_are_never_dropped(seed: int) -> None:
    """A layer of |.| only (alpha + beta = 0) used to look constant to the recursion; the bound now holds."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(2, 6, generator=gen, dtype=torch.float64)]
    net = lipcert.Network.from_weights(ws, None, "abs")
    low = pattern_bound(net)
    assert low > 0
    for method in CLOSED_FORMS:
        assert lipcert.lipschitz(net, method=method).value >= low


def test_mask_is_carried_by_npz_fingerprint_and_dead_neurons(tmp_path: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(2, 4, generator=gen, dtype=torch.float64)]
    ws[0][1] = 0.0  # a dead neuron: removed with its mask entry
    net = lipcert.Network.from_weights(ws, [torch.ones(4), None], abs_or_identity([True, True, False, False]))
    assert net.activations[0].mask == (True, False, False)
    assert net.alphas[0].tolist() == [-1.0, 1.0, 1.0]
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    z = x @ ws[0].T + 1
    expected = torch.cat([z[:, :2].abs(), z[:, 2:]], dim=1) @ ws[1].T
    torch.testing.assert_close(net(x), expected)
    save_npz(net, tmp_path / "net.npz")
    again = load_npz(tmp_path / "net.npz")
    assert again.fingerprint() == net.fingerprint()
    other = lipcert.Network.from_weights(ws, [torch.ones(4), None], abs_or_identity([True, False, True, False]))
    assert other.fingerprint() != net.fingerprint()
    with pytest.raises(ShapeMismatchError, match="mask of 2 neurons"):
        lipcert.Network.from_weights(ws, None, abs_or_identity([True, False]))
    with pytest.raises(UnknownActivationError, match="needs its per-neuron mask"):
        get_activation("abs_or_identity")


def test_methods_that_cannot_model_abs_layers_refuse(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(2, 4, generator=gen, dtype=torch.float64)]
    net = sorting.chain(ws, None, [sorting.groupsort_stages(4, 2)])
    pytest.importorskip("cvxpy")
    with pytest.raises(UnsupportedSlopesError, match="lipsdp-neuron"):
        lipcert.lipschitz(net, method="lipsdp-neuron")
    with pytest.raises(UnsupportedSlopesError, match="no LipSDP matrix"):
        check_certificate(net, lipcert.lipschitz(net, method="sn"))
    mixed = lipcert.Network(net.weights, net.biases, net.activations, (torch.tensor([-1.0, 0.0, 1.0, 1.0]),),
                            (torch.tensor([1.0, 1.0, 1.0, 1.0]),), net.input_shape)
    with pytest.raises(UnsupportedSlopesError, match="mixes"):
        lipcert.lipschitz(mixed, method="sn")
    assert lipcert.lipschitz(net, method="optimized").value == pytest.approx(lipcert.lipschitz(net, method="combined").value)


@pytest.mark.parametrize("kind", ["maxmin", "groupsort4", "householder"])
def test_certificates_survive_pgd(kind: str, rng: np.random.Generator) -> None:
    """Global and local radii of random nets with these activations: no PGD attack succeeds inside them."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    widths = [6, 8, 8, 3]
    ws = [torch.randn(b, a, generator=gen, dtype=torch.float64) / math.sqrt(a) for a, b in itertools.pairwise(widths)]
    bs = [0.3 * torch.randn(b, generator=gen, dtype=torch.float64) for b in widths[1:]]
    net = sorting.chain(ws, bs, [activation_stages(kind, n, gen) for n in widths[1:-1]])
    x = torch.as_tensor(rng.normal(size=(16, 6)))
    y = net(x).argmax(dim=1).numpy()
    cert = lipcert.certify(net, x, y, norm=2, local=True)
    local = cert.radii["local"]
    assert np.all(local >= cert.radii["combined"]) and np.any(local > cert.radii["combined"])
    for radii in (cert.radii["combined"], local):
        hit = lipcert.attack(net, x, y, norm=2, eps=np.maximum(radii, 1e-12), steps=30, restarts=2)
        assert not np.any(hit.success & cert.correct)
    # the attack can break these nets at all (one class may dominate a wide region: large eps)
    broken = lipcert.attack(net, x, y, norm=2, eps=np.maximum(1000 * cert.radii["combined"], 1e-6), steps=100,
                            restarts=3)
    assert broken.success.any()


@pytest.mark.parametrize("identity_share", [0.0, 0.5, 0.8])
def test_exact_step_contracts_the_carried_form(identity_share: float, seed: int) -> None:
    """The step's inequality itself: for M_{k-1} = R^T R, any dh and |.| slopes d in [-1, 1] (extremes and inside),
    dphi = (W_U dh, d * W_V dh) satisfies dphi^T M_k dphi <= dh^T M_{k-1} dh."""
    from lipcert.bounds import abs_layer

    gen = torch.Generator().manual_seed(seed)
    n_in, n = 6, 9
    a = torch.randn(n_in, n_in, generator=gen, dtype=torch.float64)
    r = torch.linalg.cholesky(a @ a.T + 0.1 * torch.eye(n_in, dtype=torch.float64)).T
    weight = torch.randn(n, n_in, generator=gen, dtype=torch.float64)
    fixed = torch.rand(n, generator=gen) < identity_share
    alpha = torch.where(fixed, 1.0, -1.0).double()
    beta = torch.ones(n, dtype=torch.float64)
    nxt = torch.randn(3, n, generator=gen, dtype=torch.float64)
    step = abs_layer.step(r, weight, alpha, beta, nxt)
    assert step.r is not None and bool(step.live.all())
    dh = torch.randn(4000, n_in, generator=gen, dtype=torch.float64)
    d = torch.where(torch.rand(4000, n, generator=gen) < 0.5, -1.0, 1.0).double()
    d[2000:] *= torch.rand(2000, n, generator=gen, dtype=torch.float64)
    dphi = torch.where(fixed, 1.0, d) * (dh @ weight.T)
    before = (dh @ r.T).square().sum(dim=1)
    after = (dphi @ step.r.T).square().sum(dim=1) * math.exp(-step.log_scale)
    assert bool((after <= before * (1 + 1e-9)).all()), float((after / before).max())
