"""Correctness of the fast paths: passes run together, pruning, Lanczos estimates, float32, devices.

No timings here; benchmarks/speed.py measures speed.
"""

from __future__ import annotations

import importlib
import numpy as np
import pytest
import torch

import lipcert
from lipcert.errors import InfeasibleCertificateError
from lipcert.bounds import closed_form, recursion
from lipcert.bounds.certificate import check_certificate, lipsdp_matrix
from lipcert.bounds.eigen import lanczos, top_eigenvalue
from lipcert.bounds.rules import DEFAULT_RULE_SET
from lipcert.random_nets import gaussian
from test_bounds import has_negative_pivot


def random_chain(rng: np.random.Generator, widths: list[int], nonneg: bool = False,
                 activation: str = "relu") -> lipcert.Network:
    weights = [rng.normal(size=(o, i)) * rng.uniform(0.5, 1.5) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    if nonneg:
        weights = [np.abs(w) for w in weights]
    return lipcert.Network.from_weights(weights, activation=activation)


def passes(net: lipcert.Network, prune: float | None) -> dict[str, recursion.RecursionResult]:
    slopes = closed_form.closed_form_slopes(net.slopes())
    choosers = {rule.name: closed_form.rule_chooser(rule) for rule in DEFAULT_RULE_SET}
    return recursion.run_passes(list(net.weights), slopes, choosers, prune=prune, keep=("sn(1)",))


@pytest.mark.parametrize("widths", [[12, 9, 7, 3], [30, 25, 25, 25, 1], [180, 170, 200, 10], [40, 300, 280, 2]])
def test_passes_run_together_equal_separate_passes(widths: list[int], rng: np.random.Generator) -> None:
    """Shared trajectories change nothing: every pass is bitwise the single-rule pass."""
    for nonneg in (False, True):
        net = random_chain(rng, widths, nonneg)
        together = passes(net, prune=None)
        for rule in DEFAULT_RULE_SET:
            alone = closed_form.single_rule(list(net.weights), net.slopes(), rule)
            assert together[rule.name].value == alone.value, rule.name
            assert together[rule.name].labels == alone.labels
            for a, b in zip(together[rule.name].multipliers, alone.multipliers):
                assert torch.equal(a, b)


def test_constant_neurons_in_batched_passes(rng: np.random.Generator) -> None:
    """With constant neurons the batched passes give the single passes' bounds up to rounding.

    Not bitwise: run() drops constant neurons from Gamma after the Gram product, run_passes() from
    S_k W_k before it, so the kept entries are sums in another order (seen up to 1.4e-14 apart).
    """
    w1, w2, w3 = rng.normal(size=(8, 6)), rng.normal(size=(7, 8)), rng.normal(size=(2, 7))
    slopes = [(torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)),
              (torch.zeros(7, dtype=torch.float64), torch.tensor([1.0, 0, 1, 1, 0, 1, 1], dtype=torch.float64))]
    weights = [torch.as_tensor(w) for w in (w1, w2, w3)]
    choosers = {rule.name: closed_form.rule_chooser(rule) for rule in DEFAULT_RULE_SET}
    together = recursion.run_passes(weights, slopes, choosers)
    for rule in DEFAULT_RULE_SET:
        alone = recursion.run(weights, slopes, closed_form.rule_chooser(rule))
        assert together[rule.name].value == pytest.approx(alone.value, rel=1e-12, abs=0), rule.name
        assert float(together[rule.name].multipliers[1][1]) == 0.0  # the dropped neuron has no multiplier


def test_pruned_passes_are_the_unpruned_passes(rng: np.random.Generator) -> None:
    """Pruning only removes passes: every finished pass equals its unpruned value, SN(1) is always kept."""
    for seed, nonneg in ((1, False), (2, True)):
        net = random_chain(np.random.default_rng(seed), [60] * 8 + [1], nonneg)
        full = passes(net, prune=None)
        pruned = passes(net, prune=0.1)
        assert "sn(1)" in pruned
        assert set(pruned) | set(next(iter(pruned.values())).extras["pruned"]) == set(full)
        for name, res in pruned.items():
            assert res.value == full[name].value
        fast = lipcert.lipschitz(net, "eclipse-fast").value
        assert min(r.value for r in pruned.values()) <= fast


def test_beam_keeps_at_most_that_many_passes_and_each_is_its_unpruned_pass(rng: np.random.Generator) -> None:
    net = random_chain(rng, [40] * 7 + [2])
    slopes = closed_form.closed_form_slopes(net.slopes())
    full = closed_form.combined(list(net.weights), slopes, prune=None)
    for beam in (1, 2):
        kept = closed_form.combined(list(net.weights), slopes, beam=beam)
        assert "sn(1)" in kept
        assert len({id(r.gram) for r in kept.values()}) <= beam + 1  # one final Gram per trajectory
        for name, res in kept.items():
            assert res.value == full[name].value
    bound = lipcert.lipschitz(net, "combined", options={"beam": 1})
    assert bound.value <= lipcert.lipschitz(net, "eclipse-fast").value
    assert bound.value >= lipcert.lipschitz(net, "combined").value


def test_combined_options_are_checked() -> None:
    net = gaussian([10, 10, 1], seed=0)
    for bad, message in (({"beam": 0}, "beam must be"), ({"prune": -1}, "prune must be"),
                         ({"iterations": 3}, "unknown option")):
        with pytest.raises(lipcert.errors.LipcertError, match=message):
            lipcert.lipschitz(net, "combined", options=bad)


def test_combined_on_a_wide_net_prunes_and_stays_below_fast_and_lower_bound() -> None:
    net = gaussian([260] * 5 + [1], seed=3)
    comb = lipcert.lipschitz(net, "combined")
    assert comb.extras["pruned"]  # GC(c) is dominated on wide Gaussian nets
    assert "naive" not in comb.per_rule and "sn(1)" in comb.per_rule
    assert comb.value <= lipcert.lipschitz(net, "eclipse-fast").value
    assert comb.value >= lipcert.lower_bound(net, restarts=1, samples=8).pattern


def test_lanczos_estimate_is_accurate_and_never_far_above(rng: np.random.Generator) -> None:
    for n in (200, 500):
        y = torch.as_tensor(rng.normal(size=(n, n)))
        g = y.T @ y / n
        top = float(torch.linalg.eigvalsh(g)[-1])
        est = top_eigenvalue(lambda v: g @ v, n, dtype=g.dtype, device=g.device)
        assert est == pytest.approx(top, rel=1e-7)  # tol 1e-8 on the error estimate; seen up to 1.5e-9
        theta, resid = lanczos(lambda v: g @ v, n, dtype=g.dtype, device=g.device, tol=1e-12)
        assert theta <= top * (1 + 1e-13) and resid >= 0


def test_gram_is_exactly_symmetric_and_equals_the_product(rng: np.random.Generator) -> None:
    y = torch.as_tensor(rng.normal(size=(3, 50, 700)))
    g = recursion.gram(y)
    assert torch.equal(g, g.mT)
    torch.testing.assert_close(g, y.mT @ y, rtol=1e-12, atol=1e-12)


FLOAT32_METHODS = ("naive", "eclipse-fast", "gc", "shift", "gcs", "combined", "greedy")


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu", "sigmoid"])
def test_float32_mode_reports_valid_certificates(activation: str, rng: np.random.Generator) -> None:
    """Every float32 result is a LipSDP-Neuron certificate (the rebuilt matrix is PSD), also on deep nets.

    The 50-digit inertia test decides on small nets.  Not "never below the float64 run": on
    ill-conditioned deep nets the float32 search can land on other multipliers that certify less
    (measured up to 23 % less on 20-layer SiLU nets, with the rebuilt matrix PSD), so the check is
    the certificate itself.
    """
    for trial in range(4):
        depth = int(rng.integers(2, 6)) if trial < 2 else int(rng.integers(15, 31))
        widths = [int(rng.integers(5, 60 if trial >= 2 else 35)) for _ in range(depth)] + [int(rng.integers(1, 4))]
        net = random_chain(rng, widths, nonneg=trial % 2 == 1, activation=activation)
        for method in FLOAT32_METHODS:
            b32 = lipcert.lipschitz(net, method, dtype=torch.float32)
            assert b32.extras["dtype"] == ("float64" if method == "naive" else "float32")  # naive: always float64
            assert set(b32.per_rule) == {b32.rule}  # only the replayed certificate is reported
            if method == "naive":
                continue
            if sum(widths[:-1]) <= 100:  # small enough for the exact-enough inertia test
                rho = b32.value**2
                q = lipsdp_matrix(net, rho, [rho * m for m in b32.multipliers], list(b32.slopes))
                assert not has_negative_pivot(q), (method, widths)
            else:
                check = check_certificate(net, b32)
                assert check.valid, (method, depth, check)


def test_float32_mode_certifies_the_float64_network() -> None:
    """The float64 replay uses the net's own weights, not their float32 rounding (regression: values 3e-9 low)."""
    for seed in range(4):
        net = random_chain(np.random.default_rng(seed), [17, 29, 6, 3], nonneg=True, activation="sigmoid")
        for method in ("eclipse-fast", "gc"):
            b32 = lipcert.lipschitz(net, method, dtype=torch.float32)
            rho = b32.value**2
            q = lipsdp_matrix(net, rho, [rho * m for m in b32.multipliers], list(b32.slopes))
            assert not has_negative_pivot(q), (seed, method)


def test_float32_mode_matches_float64_on_well_conditioned_nets() -> None:
    for seed in range(3):
        net = gaussian([300, 300, 300, 10], seed=seed)
        for method in ("eclipse-fast", "combined", "gc"):
            b32 = lipcert.lipschitz(net, method, dtype=torch.float32)
            assert b32.value == pytest.approx(lipcert.lipschitz(net, method).value, rel=5e-4)
            assert set(b32.extras["float32_estimates"]) >= {b32.rule}


def test_replay_rejects_multipliers_that_are_no_certificate(rng: np.random.Generator) -> None:
    net = random_chain(rng, [20, 30, 30, 3])
    fast = lipcert.lipschitz(net, "eclipse-fast")
    weights, slopes = list(net.weights), closed_form.closed_form_slopes(net.slopes())
    again = recursion.replay(weights, slopes, list(fast.multipliers), ["sn(1)"] * 2)
    assert again.value == pytest.approx(fast.value, rel=1e-12)
    with pytest.raises(InfeasibleCertificateError):
        recursion.replay(weights, slopes, [3 * m for m in fast.multipliers], ["x"] * 2)


def test_float32_result_that_fails_its_float64_check_is_recomputed(monkeypatch: pytest.MonkeyPatch) -> None:
    net = gaussian([40, 40, 40, 3], seed=7)

    def failing(*args: object) -> None:
        raise InfeasibleCertificateError("hidden layer 2: forced")

    monkeypatch.setattr(importlib.import_module("lipcert.bounds.methods"), "replay", failing)
    b32 = lipcert.lipschitz(net, "combined", dtype=torch.float32)
    assert "recomputed in float64" in b32.status and "forced" in b32.status
    assert b32.value == lipcert.lipschitz(net, "combined").value


def test_cpu_and_other_device_agree() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: CPU/GPU agreement not checked here")
    net = gaussian([64] * 4 + [3], seed=5)
    for method in ("eclipse-fast", "combined", "greedy"):
        cpu = lipcert.lipschitz(net, method)
        gpu = lipcert.lipschitz(net, method, device="cuda")
        assert gpu.extras["device"].startswith("cuda")
        assert gpu.value == pytest.approx(cpu.value, rel=1e-9)
