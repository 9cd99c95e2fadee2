"""The method registry of lipcert.lipschitz: options reach their method, misuse raises a named error."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lipcert
from lipcert.bounds import closed_form, methods
from lipcert.bounds.methods import REGISTRY, replay_in_float64, resolve
from lipcert.bounds.rules import DEFAULT_RULE_SET, InvalidParameterError, Rule
from lipcert.errors import InfeasibleCertificateError, InvalidOptionError, UnknownMethodError
from lipcert.random_nets import gaussian

needs_cvxpy = pytest.mark.skipif(importlib.util.find_spec("cvxpy") is None, reason="needs the sdp extra")


def fixed_nets() -> list[lipcert.Network]:
    """A ReLU, a tanh and a SiLU net (negative slopes: naive takes part in combined) from fixed seeds."""
    rng = np.random.default_rng(3)
    widths = [6, 12, 9, 12, 3]
    weights = [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    biases = [rng.normal(size=o) for o in widths[1:]]
    return [gaussian([8, 16, 16, 4], seed=0), gaussian([5, 20, 20, 20, 2], "tanh", seed=1),
            lipcert.Network.from_weights(weights, biases, "silu")]


def test_registry_lists_every_method_once() -> None:
    assert list(lipcert.bounds.METHODS) == list(REGISTRY)
    assert lipcert.bounds.METHODS["combined"] == REGISTRY["combined"].description
    assert {n for n, m in REGISTRY.items() if m.float64_only} == {"naive", "eclipse", "lipsdp-neuron",
                                                                  "lipsdp-layer", "optimized"}
    assert set(REGISTRY["optimized"].options) == {"rules", "iterations", "seconds", "direction", "pairs",
                                                   "pair_iterations", "progress"}
    assert set(REGISTRY["eclipse"].options) == {"solver", "tolerance"}
    assert not REGISTRY["eclipse-fast"].options and not REGISTRY["naive"].options


def test_resolve_checks_and_completes_the_options() -> None:
    call = resolve("combined")
    assert dict(call.options) == {"rules": DEFAULT_RULE_SET, "prune": "auto", "beam": None}
    assert resolve("combined", {"rules": ["gc(1.7)", Rule("sn", 1.0)]}).options["rules"] == (Rule("gc", 1.7),
                                                                                          Rule("sn", 1.0))
    assert resolve("GC").name == "gc(1.99)" and resolve("gc", {"c": 1}).name == "gc(1)"
    assert resolve(" Shift(1.3) ").options == {"c": 1.3}
    assert resolve("gc(1.7)", {"c": 1.7}).name == "gc(1.7)"  # the same value twice is no conflict
    for alias in ("eclipse_fast", "ECL-FAST", "eclipse-fast"):
        assert resolve(alias).name == "eclipse-fast"
    assert resolve("lipsdp_neuron").options == {"solver": None, "tolerance": None}
    assert resolve("lipsdp-layer", {"solver": "clarabel", "tolerance": 1e-6}).options == {"solver": "CLARABEL",
                                                                                         "tolerance": 1e-6}


def test_rule_options_give_the_rule() -> None:
    for net in fixed_nets():
        weights, slopes = list(net.weights), net.slopes()
        fast = lipcert.lipschitz(net, "eclipse-fast")
        for method, options in (("sn", {"c": 1}), ("sn", None), ("sn(1)", None)):
            bound = lipcert.lipschitz(net, method, options=options)
            assert bound.value == fast.value and bound.method == "sn(1)"
        for kind, c in (("gc", 1.7), ("shift", 1.3), ("gcs", 1.0), ("sn", 1.5)):
            direct = closed_form.single_rule(weights, slopes, Rule(kind, c)).value
            by_option = lipcert.lipschitz(net, kind, options={"c": c})
            assert by_option.value == direct == lipcert.lipschitz(net, f"{kind}({c:g})").value
            assert by_option.method == by_option.rule == f"{kind}({c:g})"
        default = closed_form.single_rule(weights, slopes, Rule("gc", 1.99)).value
        assert lipcert.lipschitz(net, "gc").value == default


def test_combined_greedy_and_optimized_take_their_rules() -> None:
    for net in fixed_nets():
        comb = lipcert.lipschitz(net, "combined")
        singles = {r.name: lipcert.lipschitz(net, r.name).value for r in DEFAULT_RULE_SET}
        naive = lipcert.lipschitz(net, "naive").value
        assert comb.value <= min(min(singles.values()), naive)
        assert comb.per_rule == {**singles, "naive": naive}  # narrow nets: no pass pruned, each as if run alone
        two = lipcert.lipschitz(net, "combined", options={"rules": ["gc(1.5)", "shift(1.7)"], "prune": None})
        assert set(two.per_rule) == {"gc(1.5)", "shift(1.7)", "naive"}
        assert two.value == min(singles["gc(1.5)"], singles["shift(1.7)"], naive) >= comb.value
        # greedy with SN(1) alone picks SN(1) at every layer: ECLipsE-Fast
        assert lipcert.lipschitz(net, "greedy", options={"rules": ["sn"]}).value == singles["sn(1)"]
        opt = lipcert.lipschitz(net, "optimized", options={"rules": ["gc(1.5)"], "iterations": 2, "progress": False})
        assert opt.extras["iterations"] <= 2 and opt.extras["start_rule"] == "gc(1.5)"
        assert opt.value <= min(singles["gc(1.5)"], naive)
        assert opt.value >= lipcert.lower_bound(net, restarts=2, samples=16).value


@needs_cvxpy
def test_sdp_options_reach_the_solver() -> None:
    net = gaussian([4, 6, 6, 2], seed=2)
    for name in ("eclipse", "lipsdp-neuron", "lipsdp-layer"):
        bound = lipcert.lipschitz(net, name, options={"solver": "clarabel", "tolerance": 1e-6})
        assert bound.extras["solver"] == "CLARABEL"
        assert bound.value >= lipcert.lower_bound(net, restarts=2, samples=16).value
    assert lipcert.lipschitz(net, "lipsdp-neuron", options={"tolerance": 1e-6}).extras["solver_tolerance"] == 1e-6


def test_float32_runs_report_float64_certificates() -> None:
    for net in fixed_nets():
        low = lipcert.lower_bound(net, restarts=2, samples=16).value
        for method, options in (("gc", {"c": 1.7}), ("combined", {"beam": 1}), ("greedy", None)):
            b32 = lipcert.lipschitz(net, method, options=options, dtype=torch.float32)
            assert b32.extras["dtype"] == "float32" and b32.value >= low
            assert lipcert.check_certificate(net, b32).valid, method
            assert b32.value == pytest.approx(lipcert.lipschitz(net, method, options=options).value, rel=1e-3)
        b32 = lipcert.lipschitz(net, "optimized", options={"iterations": 1, "progress": False}, dtype=torch.float32)
        assert b32.extras["dtype"] == "float64"  # the optimizer always runs in float64


def test_replay_is_one_step_that_keeps_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    net = fixed_nets()[1]
    call = resolve("combined", {"rules": ["gc(1.5)", "shift(1.7)"], "prune": None})
    weights = [w.float() for w in net.weights]
    slopes = [(a.float(), b.float()) for a, b in net.slopes()]
    replayed = replay_in_float64(call, call.run(weights, slopes), net, torch.device("cpu"))
    direct = lipcert.lipschitz(net, "combined", options=call.options, dtype=torch.float32)
    assert replayed.value == direct.value and replayed.rule == direct.rule
    assert set(replayed.extras["float32_estimates"]) == {"gc(1.5)", "shift(1.7)", "naive"}

    def failing(*args: Any) -> None:
        raise InfeasibleCertificateError("forced")

    monkeypatch.setattr(methods, "replay", failing)
    redo = lipcert.lipschitz(net, "combined", options={"rules": ["gc(1.5)"], "prune": None}, dtype=torch.float32)
    assert "recomputed in float64" in redo.status
    assert set(redo.per_rule) == {"gc(1.5)", "naive"}  # the rerun kept the options
    assert redo.value == lipcert.lipschitz(net, "combined", options={"rules": ["gc(1.5)"]}).value


MISUSES: list[tuple[Any, Any, type[Exception], str]] = [
    (None, None, UnknownMethodError, "method must be one method name .*got NoneType None; valid methods: naive"),
    (5, None, UnknownMethodError, "got int 5; valid methods"),
    (["naive", "combined"], None, UnknownMethodError, r"got list \['naive', 'combined'\]"),
    ("lipsdp-network", None, UnknownMethodError, "unknown method 'lipsdp-network'; valid methods: naive, eclipse-fast"),
    ("combined(1.5)", None, UnknownMethodError, r"unknown method 'combined\(1.5\)'"),
    ("combined", ["beam"], InvalidOptionError, r"options must be a mapping .*got list \['beam'\]; "
                                               "valid options of 'combined': rules, prune, beam"),
    ("combined", "fast", InvalidOptionError, "options must be a mapping .*got str 'fast'"),
    ("eclipse-fast", {"c": 1.5}, InvalidOptionError, "'c' for method 'eclipse-fast'; valid options of "
                                                     "'eclipse-fast': none"),
    ("combined", {"c": 1.5}, InvalidOptionError, "unknown option.*'c' for method 'combined'"),
    ("optimized", {"iters": 3}, InvalidOptionError, "'iters' for method 'optimized'; valid options of 'optimized': "
                                                    "rules, iterations"),
    ("gc", {"tolerance": 1e-6}, InvalidOptionError, "'tolerance' for method 'gc'; valid options of 'gc': c"),
    ("combined", {"eps": 1e-6}, InvalidOptionError, "'eps' for method 'combined'"),
    ("lipsdp-neuron", {"eps": 1e-6}, InvalidOptionError, "valid options of 'lipsdp-neuron': solver, tolerance"),
    ("gc", {"c": 2.0}, InvalidParameterError, "0 < c < 2"),
    ("gc", {"c": "1.5"}, InvalidParameterError, "c must be a number"),
    ("gc(1.7)", {"c": 1.5}, InvalidParameterError, "given together with c=1.5"),
    ("combined", {"rules": "gc"}, InvalidParameterError, "rules must be a sequence"),
    ("greedy", {"rules": []}, InvalidParameterError, "non-empty"),
    ("combined", {"beam": 0}, InvalidParameterError, "beam must be"),
    ("optimized", {"seconds": -1}, InvalidParameterError, "seconds must be"),
    ("eclipse", {"tolerance": 2}, InvalidParameterError, r"tolerance must be a number in \(0, 1\)"),
    ("eclipse", {"solver": "mosek"}, UnknownMethodError, "unknown SDP solver 'MOSEK'"),
]


@pytest.mark.parametrize(("method", "options", "error", "message"), MISUSES)
def test_misuse_raises_a_named_error(method: Any, options: Any, error: type[Exception], message: str) -> None:
    net = gaussian([3, 4, 2], seed=0)
    with pytest.raises(error, match=message):
        lipcert.lipschitz(net, method, options=options)


def test_vnnlib_check_names_a_bad_method_before_reading_anything(tmp_path: Path) -> None:
    from lipcert.vnncomp import vnnlib_check

    with pytest.raises(UnknownMethodError, match="unknown method 'magic'"):
        vnnlib_check(tmp_path / "missing.onnx", tmp_path / "missing.vnnlib", method="magic")
