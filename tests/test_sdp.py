"""SDP reference methods: orderings (math.md 8.4), certificates (8.2), an independent cvxpy
reference for LipSDP, ECLipsE = LipSDP-Neuron for one hidden layer (8.5), and error paths."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

import lipcert
from lipcert.bounds import sdp
from lipcert.bounds.rules import InvalidParameterError
from lipcert.errors import MissingExtraError, ProblemTooLargeError, UnknownMethodError

pytestmark = pytest.mark.sdp
needs_cvxpy = pytest.mark.skipif(importlib.util.find_spec("cvxpy") is None, reason="needs the sdp extra")

# Relative slack for "certified SDP value <= other bound": the SDP optimum is below every other
# member of the family; its certificate sits above the optimum by the solver's inaccuracy.
SOLVER_TOL = 1e-4
CLOSED_FORMS = ("naive", "eclipse-fast", "gc", "shift", "gcs", "combined", "greedy")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu(0.1)", "silu")


def gaussian_net(rng: np.random.Generator, widths: list[int], activation: str = "relu",
                 scale: float = 1.0) -> lipcert.Network:
    """W_k ~ N(0, scale^2 / fan_in), random biases (irrelevant to every bound)."""
    weights = [scale * rng.normal(size=(o, i)) / math.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    biases = [rng.normal(size=o) for o in widths[1:]]
    return lipcert.Network.from_weights(weights, biases, activation)


def reference_lipsdp(net: lipcert.Network, per_neuron: bool) -> float:
    """sqrt(rho*) of math.md section 2 built directly (no reduction, no scaling), Clarabel."""
    import cvxpy as cp

    ws = [w.numpy() for w in net.weights]
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(n, nonneg=True) if per_neuron else cp.Variable(nonneg=True) * np.ones(n) for n in dims[1:]]
    blocks = [[np.zeros((a, b)) for b in dims] for a in dims]
    diag = [rho * np.eye(dims[0])] + [2 * cp.diag(t) for t in ts]
    for k, (alpha, beta) in enumerate(net.slopes(), start=1):
        a, b, w, t = alpha.numpy(), beta.numpy(), ws[k - 1], ts[k - 1]
        diag[k - 1] = diag[k - 1] + 2 * w.T @ cp.diag(cp.multiply(a * b, t)) @ w
        blocks[k][k - 1] = -cp.diag(cp.multiply(a + b, t)) @ w
        blocks[k - 1][k] = blocks[k][k - 1].T
    diag[-1] = diag[-1] - ws[-1].T @ ws[-1]
    for k, d in enumerate(diag):
        blocks[k][k] = d
    q = cp.bmat(blocks)
    cp.Problem(cp.Minimize(rho), [(q + q.T) / 2 >> 0]).solve(solver=cp.CLARABEL)
    return math.sqrt(float(rho.value))


@needs_cvxpy
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_orderings(rng: np.random.Generator, activation: str) -> None:
    net = gaussian_net(rng, [6, 10, 10, 10, 2], activation)
    neuron = lipcert.lipschitz(net, "lipsdp-neuron")
    assert neuron.extras["solver"] == "CLARABEL"
    lower = lipcert.lower_bound(net)
    assert lower.value <= neuron.value * (1 + 1e-9)
    others = {m: lipcert.lipschitz(net, m).value for m in CLOSED_FORMS + ("eclipse", "lipsdp-layer")}
    for method, value in others.items():
        assert neuron.value <= value * (1 + SOLVER_TOL), method
        assert lower.value <= value * (1 + 1e-9), method


@needs_cvxpy
@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.1)", "silu"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_one_hidden_layer_eclipse_equals_lipsdp_neuron(rng: np.random.Generator, activation: str,
                                                      outputs: int) -> None:
    # math.md 12.4: a theorem for L = 2, any output dimension; exact slopes in both.
    net = gaussian_net(rng, [7, 12, outputs], activation)
    eclipse = lipcert.lipschitz(net, "eclipse").value
    neuron = lipcert.lipschitz(net, "lipsdp-neuron").value
    assert eclipse == pytest.approx(neuron, rel=1e-3)


@needs_cvxpy
@pytest.mark.parametrize("method", sdp.SDP_NAMES)
@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.1)", "silu"])
def test_certificate_rebuilds(rng: np.random.Generator, method: str, activation: str) -> None:
    net = gaussian_net(rng, [5, 8, 8, 3], activation)
    bound = lipcert.lipschitz(net, method)
    assert bound.status == "ok"
    assert list(bound.extras["layer_rules"]) == [method] * 2
    assert lipcert.check_certificate(net, bound).valid
    if method == "lipsdp-neuron":  # Theorem 1's value is the smallest rho for these multipliers
        assert not lipcert.check_certificate(net, bound, scale=1 - 1e-4).valid


@needs_cvxpy
@pytest.mark.parametrize("activation", ["relu", "leaky_relu(0.1)", "silu"])
@pytest.mark.parametrize("method", ["lipsdp-neuron", "lipsdp-layer"])
def test_matches_direct_formulation(rng: np.random.Generator, activation: str, method: str) -> None:
    # n_0 = 12 > n_1 = 6 exercises the input reduction; leaky/silu exercise the P-term.
    net = gaussian_net(rng, [12, 6, 8, 2], activation)
    bound = lipcert.lipschitz(net, method)
    assert bound.extras["input_reduced"] == (12, 6)
    reference = reference_lipsdp(net, per_neuron=method == "lipsdp-neuron")
    assert reference * (1 - 1e-6) <= bound.value <= reference * (1 + SOLVER_TOL)
    assert bound.extras["solver_value"] == pytest.approx(reference, rel=SOLVER_TOL)


@needs_cvxpy
def test_conditioning_keeps_deep_badly_scaled_nets_exact(rng: np.random.Generator) -> None:
    # 8 hidden layers with weights ~30x too large: the value must scale by exactly 30^9.
    widths = [4] + [6] * 8 + [1]
    net = gaussian_net(rng, widths)
    big = lipcert.Network.from_weights([30 * w for w in net.weights], None, "relu")
    small = sdp.solve("lipsdp-neuron", list(net.weights), net.slopes(), solver="CLARABEL")
    large = sdp.solve("lipsdp-neuron", list(big.weights), big.slopes(), solver="CLARABEL")
    assert large.value == pytest.approx(small.value * 30.0**9, rel=SOLVER_TOL)
    assert large.labels == ["lipsdp-neuron"] * 8
    assert small.value <= lipcert.lipschitz(net, "combined").value * (1 + SOLVER_TOL)


@needs_cvxpy
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_scs_and_clarabel_agree(rng: np.random.Generator, activation: str) -> None:
    """Agreement to 1e-3 is a claim on SCS's accuracy, so on a fixed net (SCS was 1.2e-3 looser on one
    random draw); on a random draw both certificates must stay above the pattern lower bound."""
    for draw in (np.random.default_rng(5), rng):
        net = gaussian_net(draw, [8, 12, 12, 2], activation)
        low = lipcert.lower_bound(net, restarts=2, samples=16).value
        for method in ("lipsdp-neuron", "eclipse"):
            scs = sdp.solve(method, list(net.weights), net.slopes(), solver="scs")
            clarabel = sdp.solve(method, list(net.weights), net.slopes(), solver="CLARABEL")
            assert scs.extras["solver"] == "SCS" and clarabel.extras["solver"] == "CLARABEL"
            assert min(scs.value, clarabel.value) >= low
            if draw is not rng:
                assert scs.value == pytest.approx(clarabel.value, rel=1e-3)


@needs_cvxpy
def test_scs_multipliers_certify_close_to_rho_with_negative_slopes() -> None:
    # Regression: SCS's slightly infeasible multipliers made the driver halve lambda for SiLU
    # (certificate 3.54 against sqrt(rho) 2.76); the shrink factors are now screened first.
    rng = np.random.default_rng(1001)
    net = gaussian_net(rng, [10, 20, 20, 20, 2], "silu")
    bound = lipcert.lipschitz(net, "lipsdp-neuron")
    assert bound.extras["solver"] == "SCS"
    assert bound.value <= bound.extras["solver_value"] * (1 + SOLVER_TOL)
    assert bound.status == "ok"


@needs_cvxpy
def test_constant_neurons_are_dropped(rng: np.random.Generator) -> None:
    ws = [torch.from_numpy(rng.normal(size=s)) for s in [(8, 5), (7, 8), (1, 7)]]
    slopes = [(torch.zeros(8), torch.ones(8)), (torch.zeros(7), torch.ones(7))]
    dead = [1, 4]
    slopes[0][1][dead] = 0.0  # slope class {0}: these neurons are constant
    keep = [i for i in range(8) if i not in dead]
    pruned = [ws[0][keep], ws[1][:, keep], ws[2]]
    pruned_slopes = [(torch.zeros(6), torch.ones(6)), slopes[1]]
    for method in sdp.SDP_NAMES:
        full = sdp.solve(method, ws, slopes)
        ref = sdp.solve(method, pruned, pruned_slopes)
        assert full.value == pytest.approx(ref.value, rel=1e-6), method
        assert torch.all(full.multipliers[0][dead] == 0) and torch.all(full.multipliers[0][keep] > 0)


@needs_cvxpy
def test_float32_and_single_layer(rng: np.random.Generator) -> None:
    net = gaussian_net(rng, [6, 9, 9, 2])
    f64 = lipcert.lipschitz(net, "lipsdp-neuron").value
    f32 = lipcert.lipschitz(net, "lipsdp-neuron", dtype=torch.float32).value
    assert f32 == pytest.approx(f64, rel=1e-4)
    linear = lipcert.Network.from_weights([rng.normal(size=(3, 4))])
    for method in sdp.SDP_NAMES:
        norm = float(torch.linalg.matrix_norm(linear.weights[0], ord=2))
        assert lipcert.lipschitz(linear, method).value == pytest.approx(norm, rel=1e-7)


@needs_cvxpy
@pytest.mark.parametrize("method", sdp.SDP_NAMES)
def test_solver_failure_falls_back_to_eclipse_fast(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                                   method: str) -> None:
    net = gaussian_net(rng, [5, 7, 7, 1])
    monkeypatch.setattr(sdp, "_run_solver", lambda *args, **kwargs: ("error: boom", 0.0))
    bound = lipcert.lipschitz(net, method)
    assert bound.value == pytest.approx(lipcert.lipschitz(net, "eclipse-fast").value, rel=1e-12)
    assert list(bound.extras["layer_rules"]) == ["sn(1)", "sn(1)"]
    assert "fell back to sn(1)" in bound.status
    assert lipcert.check_certificate(net, bound).valid


@needs_cvxpy
def test_too_large_problems_raise_before_solving() -> None:
    wide = lipcert.Network.from_weights([np.ones((800, 10)), np.eye(800), np.ones((1, 800))])
    with pytest.raises(ProblemTooLargeError, match=r"size 1610.*SCS limit of 1500"):
        lipcert.lipschitz(wide, "lipsdp-neuron")
    with pytest.raises(ProblemTooLargeError, match=r"size 1600.*SCS limit of 1500"):
        lipcert.lipschitz(wide, "eclipse")
    mid = lipcert.Network.from_weights([np.ones((80, 10)), np.eye(80), np.ones((1, 80))])
    with pytest.raises(ProblemTooLargeError, match=r"size 170.*CLARABEL limit of 150"):
        sdp.solve("lipsdp-layer", list(mid.weights), mid.slopes(), solver="clarabel")


@needs_cvxpy
def test_bad_arguments(rng: np.random.Generator) -> None:
    net = gaussian_net(rng, [3, 4, 1])
    with pytest.raises(UnknownMethodError, match="MOSEK"):
        sdp.solve("lipsdp-neuron", list(net.weights), net.slopes(), solver="mosek")
    with pytest.raises(UnknownMethodError, match="lipsdp-network"):
        sdp.solve("lipsdp-network", list(net.weights), net.slopes())
    with pytest.raises(InvalidParameterError, match="tolerance must be a number in"):
        sdp.solve("eclipse", list(net.weights), net.slopes(), tolerance=0.0)
    with pytest.raises(UnknownMethodError, match="unknown SDP solver 3"):
        sdp.solve("eclipse", list(net.weights), net.slopes(), solver=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sdp.SDP_NAMES)
def test_missing_cvxpy_names_the_extra(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # makes `import cvxpy` fail
    net = lipcert.Network.from_weights([np.ones((3, 2)), np.ones((1, 3))])
    with pytest.raises(MissingExtraError, match=r"pip install 'lipcert\[sdp\]'"):
        lipcert.lipschitz(net, method)


@needs_cvxpy
def test_missing_solver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scs", None)
    net = lipcert.Network.from_weights([np.ones((3, 2)), np.ones((1, 3))])
    with pytest.raises(MissingExtraError, match=r"scs.*pip install 'lipcert\[sdp\]'"):
        sdp.solve("lipsdp-neuron", list(net.weights), net.slopes(), solver="SCS")


def _ecosystem_net(widths: list[int]) -> lipcert.Network:
    """ecosystem.md section 3: W ~ N(0, 1/fan_in) from np.random.default_rng(0), ReLU."""
    rng = np.random.default_rng(0)
    return lipcert.Network.from_weights([rng.normal(size=(o, i)) / math.sqrt(i)
                                         for i, o in zip(widths[:-1], widths[1:])])


@needs_cvxpy
@pytest.mark.parametrize(("widths", "expected", "tol"), [
    ([20, 30, 30, 10], 2.49356, 2e-5),
    ([784, 50, 50, 10], 1.73086, 2e-5),
    pytest.param([784, 100, 100, 10], 1.66959, 1e-4, marks=pytest.mark.slow),  # SCS there: 1.66959 / 1.66969
])
def test_reproduces_ecosystem_table(widths: list[int], expected: float, tol: float) -> None:
    # ecosystem.md section 3: LipSDP-Neuron of the same nets, 5 digits.
    net = _ecosystem_net(widths)
    bound = lipcert.lipschitz(net, "lipsdp-neuron")
    assert expected - 1e-5 <= bound.value <= expected + tol
    assert bound.value <= lipcert.lipschitz(net, "combined").value
