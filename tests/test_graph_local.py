"""Local constants and radii of residual graphs (lipcert/graph_chain.py, lipcert/local/graph.py; decisions 45).

Checked against what the bounds do not compute: the graph's own forward pass (the chain form), autograd
Jacobians of f_y - f_j at points sampled inside the ball, difference quotients from the centre, and PGD inside
the certified local radii.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert import datasets
from lipcert.activations import get_activation, on_neurons
from lipcert.bounds.graph_blocks import graph_recursion
from lipcert.bounds.intervals import anchored_slopes, slope_interval
from lipcert.errors import GraphNetworkError, ShapeMismatchError
from lipcert.graph import GraphNetwork
from lipcert.graph_chain import graph_chain
from lipcert.local import LOCAL_METHOD, graph_local_bound, local_radius
from lipcert.local.graph import RECURSION
from lipcert.radii import pairwise_constants

from test_graph import residual_net

REPO = Path(__file__).resolve().parents[1]
ACTIVATIONS = ("relu", "tanh", "silu", "leaky_relu(0.1)", "sigmoid", "abs")


def _net(rng: np.random.Generator, act: str) -> GraphNetwork:
    return residual_net(rng, act, width=6, n_in=5, n_out=4)


def _ball(rng: np.random.Generator, x: torch.Tensor, r: float, n: int, sphere: bool = False) -> torch.Tensor:
    u = torch.as_tensor(rng.normal(size=(n, x.numel())))
    u = u / u.norm(dim=1, keepdim=True)
    if not sphere:
        u = u * torch.as_tensor(rng.random((n, 1)) ** (1 / x.numel()))
    return x.reshape(1, -1) + r * u


def _pair_gradients(net: GraphNetwork, points: torch.Tensor, y: int) -> np.ndarray:
    """max over the points of ||grad (f_y - f_j)||, per j."""
    pts = points.clone().requires_grad_(True)
    out = net.forward_flat(pts)
    norms = np.zeros(out.shape[1])
    for j in range(out.shape[1]):
        if j != y:
            (g,) = torch.autograd.grad((out[:, y] - out[:, j]).sum(), pts, retain_graph=True)
            norms[j] = float(g.norm(dim=1).max())
    return norms


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_chain_form_computes_the_graph_and_names_its_sites(act: str, rng: np.random.Generator) -> None:
    net = _net(rng, act)
    form = graph_chain(net)
    x = torch.as_tensor(rng.normal(size=(20, 5)) * 3)
    assert torch.allclose(form.chain(x), net(x), rtol=0, atol=1e-13)
    # the sites, read from the chain's own slopes, are the graph's own slopes
    own = form.site_slopes(form.chain.alphas, form.chain.betas)
    assert len(own) == len(net.activation_names)
    assert graph_recursion(net, greedy=True).value == graph_recursion(net, slopes=own, greedy=True).value
    with pytest.raises(ShapeMismatchError, match="one .alpha, beta. pair per activation site"):
        graph_recursion(net, slopes=own[1:])


def test_activations_on_some_neurons(rng: np.random.Generator) -> None:
    mask = [False, True, True, False, True]
    for name in ("relu", "tanh", "silu", "abs"):
        act = on_neurons(get_activation(name), mask)
        z = torch.as_tensor(rng.normal(size=(4, 5)) * 2)
        on = torch.tensor(mask)
        assert torch.equal(act(z), torch.where(on, get_activation(name)(z), z))
        again = pickle.loads(pickle.dumps(act))
        assert torch.equal(again(z), act(z)) and again.mask == act.mask
        lo, hi = z.min(0).values - 0.1, z.max(0).values + 0.1
        alpha, beta = slope_interval(act, lo, hi)
        assert torch.all(alpha[~on] == 1) and torch.all(beta[~on] == 1)
        a, b = anchored_slopes(act, lo, hi, z[0], z[0], alpha, beta)
        assert torch.all(a[~on] == 1) and torch.all(b[~on] == 1) and torch.all(a <= b)
    assert on_neurons(get_activation("relu"), [True] * 3).mask is None


@pytest.mark.parametrize("name", ["abs", "relu", "tanh"])
def test_anchored_secants_of_masked_neurons_hold(name: str, rng: np.random.Generator) -> None:
    """Secants (phi(z) - phi(z0)) / (z - z0) from the centre's z0 into [lo, hi] lie in the anchored slopes, on
    and off the mask; for |.| (the MaxMin rewrite) they are narrower than [-1, 1] where z0 > 0 > lo."""
    n = 400
    mask = rng.random(n) < 0.7
    act = on_neurons(get_activation(name), mask.tolist())
    z0 = torch.as_tensor(rng.normal(size=n) * 2)
    lo = z0 - torch.as_tensor(rng.random(n) * 3)
    hi = z0 + torch.as_tensor(rng.random(n) * 3)
    a, b = anchored_slopes(act, lo, hi, z0, z0, *slope_interval(act, lo, hi))
    z = lo[:, None] + torch.as_tensor(rng.random((n, 64))) * (hi - lo)[:, None]
    apart = (z - z0[:, None]).abs() > 1e-6
    secant = (act(z.T).T - act(z0)[:, None]) / torch.where(apart, z - z0[:, None], 1.0)
    assert bool(((secant >= a[:, None] - 1e-12) & (secant <= b[:, None] + 1e-12) | ~apart).all())
    if name == "abs":
        crossing = torch.as_tensor(mask) & (z0 > 0) & (lo < 0)
        assert bool((a[crossing] > -1).all())


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_local_constants_bound_jacobians_and_quotients_in_the_ball(act: str, rng: np.random.Generator) -> None:
    """On the ball: pairwise constants >= sampled Jacobian norms of f_y - f_j; anchored constants >= difference
    quotients from the centre (inside and on the sphere); every pre-activation inside its interval."""
    net = _net(rng, act)
    form = graph_chain(net)
    x = torch.as_tensor(rng.normal(size=5))
    y = int(net(x).argmax())
    others = np.arange(4) != y
    for r in (0.05, 0.5, 2.0):
        pair = graph_local_bound(net, x, r)
        assert RECURSION in pair.grams
        grads = _pair_gradients(net, _ball(rng, x, r, 300), y)
        assert np.all(pair.pairwise()[y, others] >= grads[others]), r
        anch = graph_local_bound(net, x, r, anchored=True)
        pts = torch.cat([_ball(rng, x, r, 300), _ball(rng, x, r, 300, sphere=True)])
        with torch.no_grad():
            f, f0 = net(pts), net(x.reshape(1, -1))
        moved = ((f[:, [y]] - f) - (f0[:, [y]] - f0)).abs()
        quotient = (moved / (pts - x).norm(dim=1, keepdim=True)).max(0).values.numpy()
        assert np.all(anch.pairwise()[y, others] >= quotient[others]), r
        z = pts
        for k, a in enumerate(form.chain.activations):
            z = z @ form.chain.weights[k].T + form.chain.biases[k]
            assert bool((z >= anch.lower[k]).all() and (z <= anch.upper[k]).all()), (r, k)
            z = a(z)


@pytest.mark.parametrize("act", ["relu", "tanh", pytest.param("silu", marks=pytest.mark.slow),
                                 pytest.param("abs", marks=pytest.mark.slow)])
def test_local_radii_of_graphs_are_sound_and_not_below_global(act: str, rng: np.random.Generator) -> None:
    """certify(local=True) on residual graphs: never below the global radius, larger on most inputs of a fixed
    draw (a quality claim), and PGD finds nothing inside."""
    for trial in range(2):  # trial 0 on a fixed draw, trial 1 on the test's seed
        draw = np.random.default_rng(3) if trial == 0 else rng
        net = _net(draw, act)
        x = draw.normal(size=(4, 5))
        y = np.asarray(net(x)).argmax(axis=1)
        cert = lipcert.certify(net, x, y, method="combined", local={"iterations": 0, "rules": ["gcs(1)"]},
                               progress=False)
        local, glob = cert.radii[LOCAL_METHOD], cert.radii["combined"]
        assert np.all(local >= glob)
        if trial == 0:
            assert np.mean(local > 1.5 * glob) > 0.5
        hit = lipcert.attack(net, x, y, norm=2, eps=np.maximum(local, 1e-12), steps=30, restarts=2, progress=False)
        assert not np.any(hit.success & cert.correct)
        # each local radius is proven by the constants of its own ball (closed forms only: iterations 0)
        logits, floor = np.asarray(net(x)), pairwise_constants(cert.bounds["combined"], net)
        for i in np.flatnonzero(local > glob)[:2]:
            r = float(local[i])
            pair = np.minimum(graph_local_bound(net, x[i], r, rules=["gcs(1)"], anchored=True).pairwise(), floor)[y[i]]
            margin = logits[i, y[i]] - logits[i] - 2 * cert.logit_error[i]
            others = np.arange(4) != y[i]
            assert np.all(margin[others] >= pair[others] * r * (1 - 1e-9))


def test_verifier_intervals_need_a_chain(rng: np.random.Generator) -> None:
    net = _net(rng, "relu")
    x = torch.as_tensor(rng.normal(size=5))
    logits = np.asarray(net(x))
    with pytest.raises(GraphNetworkError, match="need a chain"):
        local_radius(net, x, int(logits.argmax()), logits, 1e-12, np.full((4, 4), 1e3), start=1e-3,
                     intervals=lambda c, r: [])


def _zoo(name: str) -> GraphNetwork:
    net = lipcert.load(REPO / "benchmarks" / "zoo" / "models" / f"{name}.onnx", input_range=(0.0, 1.0))
    assert isinstance(net, GraphNetwork)
    return net


def _unbroken(net: GraphNetwork, x: np.ndarray, y: np.ndarray, radii: np.ndarray, correct: np.ndarray) -> None:
    hit = lipcert.attack(net, x, y, norm=2, eps=np.maximum(radii, 1e-12), steps=30, restarts=2, progress=False)
    assert not np.any(hit.success & correct)


def test_the_sll_model_gets_local_radii(shared_data: Path) -> None:
    """orthogonium's SLL model (MaxMin between SLL blocks): local radii never below the global ones, larger
    than the eclipse-fast ones, and PGD finds nothing inside them."""
    net = _zoo("fmnist-sll-maxmin")
    x, y = datasets.load("fashion-mnist", "test", shared_data / "datasets", limit=1, download=False)
    cert = lipcert.certify(net, x, y, method="eclipse-fast", local={"iterations": 0, "rules": ["gcs(1)"]},
                           progress=False)
    local, glob = cert.radii[LOCAL_METHOD], cert.radii["eclipse-fast"]
    assert np.all(local >= glob) and np.all(local[cert.correct] > glob[cert.correct])
    _unbroken(net, x, y, local, cert.correct)


def test_cli_certifies_local_radii_of_a_residual_onnx_model(shared_data: Path, tmp_path: Path) -> None:
    """`lipcert certify --local` on deel-torchlip's LiResNet-style GroupSort model, as a user runs it."""
    import csv

    from lipcert.cli import main

    out = tmp_path / "run"
    model = REPO / "benchmarks" / "zoo" / "models" / "fmnist-lipres-groupsort.onnx"
    assert main(["certify", str(model), "--dataset", "fashion-mnist", "--data-dir", str(shared_data / "datasets"),
                 "--n", "2", "--method", "eclipse-fast", "--eps", "0.5,1", "--out", str(out), "--local",
                 "--local-iterations", "0", "--no-plots"]) == 0
    rows = list(csv.DictReader((out / "samples.csv").open()))
    local = np.array([float(r["radius_local"]) for r in rows])
    glob = np.array([float(r["radius_eclipse-fast"]) for r in rows])
    correct = np.array([r["label"] == r["prediction"] for r in rows])
    assert np.all(local >= glob) and np.all(local[correct] > glob[correct])
    x, y = datasets.load("fashion-mnist", "test", shared_data / "datasets", limit=2, download=False)
    _unbroken(_zoo("fmnist-lipres-groupsort"), x, y, local, correct)
