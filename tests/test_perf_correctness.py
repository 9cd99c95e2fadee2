"""Correctness of the fast paths (issue 7): passes run together, pruning, Lanczos estimates, float32, devices.

No timings here; benchmarks/speed.py measures speed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipcert
from lipcert.bounds import closed_form, recursion
from lipcert.bounds.eigen import lanczos, top_eigenvalue
from lipcert.bounds.rules import DEFAULT_RULE_SET
from lipcert.random_nets import gaussian


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
    w1, w2, w3 = rng.normal(size=(8, 6)), rng.normal(size=(7, 8)), rng.normal(size=(2, 7))
    slopes = [(torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)),
              (torch.zeros(7, dtype=torch.float64), torch.tensor([1.0, 0, 1, 1, 0, 1, 1], dtype=torch.float64))]
    weights = [torch.as_tensor(w) for w in (w1, w2, w3)]
    choosers = {rule.name: closed_form.rule_chooser(rule) for rule in DEFAULT_RULE_SET}
    together = recursion.run_passes(weights, slopes, choosers)
    for rule in DEFAULT_RULE_SET:
        alone = recursion.run(weights, slopes, closed_form.rule_chooser(rule))
        assert together[rule.name].value == alone.value
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
        assert est == pytest.approx(top, rel=1e-9)
        theta, resid = lanczos(lambda v: g @ v, n, dtype=g.dtype, device=g.device, tol=1e-12)
        assert theta <= top * (1 + 1e-13) and resid >= 0


def test_gram_is_exactly_symmetric_and_equals_the_product(rng: np.random.Generator) -> None:
    y = torch.as_tensor(rng.normal(size=(3, 50, 700)))
    g = recursion.gram(y)
    assert torch.equal(g, g.mT)
    torch.testing.assert_close(g, y.mT @ y, rtol=1e-12, atol=1e-12)


FLOAT32_METHODS = ("naive", "eclipse-fast", "gc", "shift", "gcs", "combined", "greedy")


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu", "sigmoid"])
def test_float32_never_below_float64(activation: str, rng: np.random.Generator) -> None:
    for trial in range(4):
        depth = int(rng.integers(2, 6)) if trial < 2 else int(rng.integers(15, 31))
        widths = [int(rng.integers(5, 60)) for _ in range(depth)] + [int(rng.integers(1, 4))]
        net = random_chain(rng, widths, nonneg=trial % 2 == 1, activation=activation)
        for method in FLOAT32_METHODS:
            b64 = lipcert.lipschitz(net, method)
            b32 = lipcert.lipschitz(net, method, dtype=torch.float32)
            if method == "greedy" and b32.extras["layer_rules"] != b64.extras["layer_rules"]:
                continue  # a different per-layer choice (near-tie of scores) is another certificate
            assert b32.value >= b64.value, (method, depth, b32.value, b64.value)
            assert b32.extras["dtype"] == "float32"


def test_float32_on_a_wide_net_is_not_below_float64() -> None:
    net = gaussian([300, 300, 300, 1], seed=4)
    for method in ("eclipse-fast", "combined"):
        assert (lipcert.lipschitz(net, method, dtype=torch.float32).value
                >= lipcert.lipschitz(net, method).value)


def test_cpu_and_other_device_agree() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: CPU/GPU agreement not checked here")
    net = gaussian([64] * 4 + [3], seed=5)
    for method in ("eclipse-fast", "combined", "greedy"):
        cpu = lipcert.lipschitz(net, method)
        gpu = lipcert.lipschitz(net, method, device="cuda")
        assert gpu.extras["device"].startswith("cuda")
        assert gpu.value == pytest.approx(cpu.value, rel=1e-9)
