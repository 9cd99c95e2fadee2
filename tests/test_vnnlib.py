"""VNN-LIB parsing and VNN-COMP answers (lipcert.adapters.vnnlib, lipcert.vnncomp, lipcert vnnlib)."""

from __future__ import annotations

import csv
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.adapters.vnnlib import VnnProperty, parse_vnnlib, read_vnnlib
from lipcert.cli import main
from lipcert.errors import LipcertError, VnnlibError
from lipcert.vnncomp import STATUSES, VnnResult, vnnlib_check

REPO = Path(__file__).resolve().parents[1]


def declare(n: int, k: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(k))


def box(lower: np.ndarray, upper: np.ndarray) -> str:
    return "".join(f"(assert (>= X_{i} {lo!r}))\n(assert (<= X_{i} {hi!r}))\n"
                   for i, (lo, hi) in enumerate(zip(lower.tolist(), upper.tolist())))


def write_mlp(path: Path, weights: list[np.ndarray], biases: list[np.ndarray]) -> list[np.ndarray]:
    """An ONNX MLP (Gemm, Relu between) with float32 weights; returns the weights as float64 (exact)."""
    nodes, inits, name = [], [], "x"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{k}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [name, f"W{k}", f"b{k}"], [f"z{k}"], transB=1))
        name = f"z{k}"
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [name], [f"a{k}"]))
            name = f"a{k}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights[0].shape[1]])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, weights[-1].shape[0]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return [np.asarray(w, np.float32).astype(np.float64) for w in weights]


def check_counterexample(model: Path, prop: VnnProperty, result: VnnResult) -> None:
    """The counterexample lies in the box and its onnxruntime output is in the violation region."""
    assert result.status == "sat" and result.counterexample is not None
    x, y = result.counterexample
    assert prop.in_box(x)[0]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    out = np.asarray(sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0], np.float64).ravel()
    np.testing.assert_array_equal(out, y)
    assert prop.violated_by(out)[0]


# ---------------------------------------------------------------------------------- parser
def test_box_and_single_constraint() -> None:
    text = declare(2, 3) + "; comment (with parens\n(assert (<= X_0 1.5))\n(assert (>= X_0 -0.5))\n" \
        "(assert (and (>= X_1 0) (<= X_1 2e-1)))\n(assert (<= Y_0 Y_2))\n"
    p = parse_vnnlib(text)
    np.testing.assert_array_equal(p.lower, [-0.5, 0.0])
    np.testing.assert_array_equal(p.upper, [1.5, 0.2])
    assert (p.num_inputs, p.num_outputs, len(p.disjuncts)) == (2, 3, 1)
    np.testing.assert_array_equal(p.disjuncts[0].a, [[1.0, 0.0, -1.0]])
    np.testing.assert_array_equal(p.disjuncts[0].b, [0.0])
    assert p.violated_by(np.array([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])).tolist() == [True, False]


def test_conjunction_disjunction_and_linear_terms() -> None:
    text = declare(1, 3) + box(np.zeros(1), np.ones(1)) + """
(assert (or
    (and (>= Y_1 Y_0) (<= (+ Y_0 (* -1.0 Y_2)) 0.5))
    (and (> (- Y_2 (* 2 Y_1)) 1) (= Y_0 3))
    (<= 0.25 (/ Y_1 4))
))
(assert (>= Y_0 -10))
"""
    p = parse_vnnlib(text)
    assert len(p.disjuncts) == 3
    d0, d1, d2 = p.disjuncts
    # every disjunct also carries the top-level conjunct -Y_0 <= 10
    np.testing.assert_array_equal(d0.a, [[1, -1, 0], [1, 0, -1], [-1, 0, 0]])
    np.testing.assert_array_equal(d0.b, [0, 0.5, 10])
    np.testing.assert_array_equal(d1.a, [[0, 2, -1], [1, 0, 0], [-1, 0, 0], [-1, 0, 0]])
    np.testing.assert_array_equal(d1.b, [-1, 3, -3, 10])
    assert d1.strict.tolist() == [True, False, False, False]
    np.testing.assert_array_equal(d2.a, [[0, -0.25, 0], [-1, 0, 0]])
    np.testing.assert_array_equal(d2.b, [-0.25, 10])
    assert not p.violated_by(np.array([3.0, 0.0, 1.0]))[0]        # d1 fails only by strictness: 1 - 0 > 1
    assert d1.contains(np.array([3.0, 0.0, 1.5]))[0] and p.violated_by(np.array([3.0, 0.0, 1.5]))[0]
    assert d2.contains(np.array([0.0, 1.0, 0.0]))[0]


def test_read_plain_and_gzip(tmp_path: Path) -> None:
    text = declare(1, 2) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= Y_0 Y_1))\n"
    (tmp_path / "p.vnnlib").write_text(text)
    (tmp_path / "p.vnnlib.gz").write_bytes(gzip.compress(text.encode()))
    a, b = read_vnnlib(tmp_path / "p.vnnlib"), read_vnnlib(tmp_path / "p.vnnlib.gz")
    np.testing.assert_array_equal(a.disjuncts[0].a, b.disjuncts[0].a)
    assert b.source.endswith("p.vnnlib.gz")


BAD = [
    ("(assert (<= (* Y_0 Y_1) 0))", "nonlinear term"),
    ("(assert (<= X_0 Y_0))", "mixing inputs (X) and outputs (Y)"),
    ("(assert (<= Y_7 0))", "Y_7 is not declared"),
    ("(assert (or (<= X_0 0.5) (<= Y_0 0)))", "input disjunctions"),
    ("(assert (<= X_0 X_1))", "only boxes are supported"),
    ("(assert (distinct Y_0 Y_1))", "unsupported formula 'distinct'"),
    ("(assert (<= (exp Y_0) 0))", "unsupported term 'exp'"),
    ("(define-fun f () Real 0)", "unsupported command 'define-fun'"),
    ("(assert (<= Y_0 0)", "'(' is never closed"),
    ("(assert (<= Y_0 zero))", "unknown symbol 'zero'"),
    ("(assert true)", "expected a formula, got 'true'"),
    ("(assert (<= X_0 nan))", "non-finite constant 'nan'"),
    ("(assert (>= X_1 -inf))", "non-finite constant '-inf'"),
    ("(assert (>= Y_0 inf))", "non-finite constant 'inf'"),
    ("(assert (<= (* 1e300 1e300 X_0) 1))", "overflow"),
    ("(assert (<= (* 1e-320 X_0) 1))", "input bounds must be finite"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad_forms_name_file_line_and_problem(line: str, message: str) -> None:
    text = declare(2, 2) + box(np.zeros(2), np.ones(2)) + line + "\n"
    with pytest.raises(VnnlibError, match=re.escape(message)) as info:
        parse_vnnlib(text, source="bad.vnnlib")
    assert str(info.value).startswith(f"bad.vnnlib:{text.count(chr(10))}: ")
    assert isinstance(info.value, LipcertError)


def test_missing_bounds_empty_box_and_undeclared_numbering(tmp_path: Path) -> None:
    with pytest.raises(VnnlibError, match=r"no upper bound for X_1"):
        parse_vnnlib(declare(2, 1) + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= Y_0 0))")
    with pytest.raises(VnnlibError, match=r"empty input box: X_0"):
        parse_vnnlib(declare(1, 1) + "(assert (>= X_0 1))(assert (<= X_0 0))(assert (<= Y_0 0))")
    with pytest.raises(VnnlibError, match=r"X_1 is not declared but X_2 is"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)")
    with pytest.raises(VnnlibError, match="no such VNN-LIB file"):
        read_vnnlib(tmp_path / "missing.vnnlib")


def test_every_shared_vnnlib_file_parses(shared_data: Path) -> None:
    files = sorted((shared_data / "models").glob("*/vnnlib/*.vnnlib"))
    assert len(files) >= 70
    for f in files:
        p = read_vnnlib(f)
        assert p.num_inputs in (784, 3072) and p.num_outputs == 10, f
        assert (p.lower <= p.upper).all() and (p.upper - p.lower).max() > 0
        # robustness properties: 9 disjuncts "some other class is at least the protected one"
        assert len(p.disjuncts) == 9 and all(d.b.tolist() == [0.0] for d in p.disjuncts)
        assert all(sorted(d.a.ravel().tolist()) == [-1.0] + [0.0] * 8 + [1.0] for d in p.disjuncts)


# ---------------------------------------------------------------------------------- known answers
def linear_instance(tmp_path: Path, eps: float) -> tuple[Path, VnnProperty, float, float]:
    """f(x) = W x + b on a box of half-width eps around x0; violation: Y_1 >= Y_0.

    Returns the model, the property, the exact minimum over the box of f_0 - f_1 (the property
    holds iff it is > 0) and the minimum over the enclosing L2 ball (what a Lipschitz proof sees).
    """
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 5))
    b = np.array([1.0, -1.0, 0.0])
    model = tmp_path / "linear.onnx"
    (w64,) = write_mlp(model, [w], [b])
    x0 = rng.uniform(-1, 1, 5)
    lower, upper = x0 - eps, x0 + eps
    prop = parse_vnnlib(declare(5, 3) + box(lower, upper) + "(assert (>= Y_1 Y_0))\n")
    c = w64[0] - w64[1]
    centre = c @ ((lower + upper) / 2) + float(np.float32(b[0])) - float(np.float32(b[1]))
    half = (upper - lower) / 2
    return model, prop, centre - np.abs(c) @ half, centre - np.linalg.norm(c) * np.linalg.norm(half)


def mid_eps(tmp_path: Path) -> float:
    """A half-width where the linear instance's box holds but its enclosing ball does not."""
    for eps in np.geomspace(1e-3, 10, 200):
        _, _, box_min, ball_min = linear_instance(tmp_path, eps)
        if ball_min < -0.01 and box_min > 0.01:
            return float(eps)
    raise AssertionError("no such eps")


def test_linear_net_exact_answers(tmp_path: Path) -> None:
    # eps where even the ball proves the property, where the box holds but its ball does not,
    # and where a box corner violates it
    model, prop, box_min, ball_min = linear_instance(tmp_path, 1e-3)
    assert ball_min > 0
    res = vnnlib_check(model, prop)
    assert res.status == "unsat" and res.proven.all() and res.counterexample is None
    assert res.radii[0] == pytest.approx(res.margins[0] / res.lipschitz[0], rel=1e-12)
    assert res.radii[0] > res.radius

    model, prop, box_min, ball_min = linear_instance(tmp_path, mid_eps(tmp_path))
    res = vnnlib_check(model, prop)
    assert res.status == "unknown" and not res.proven.any()   # sound: no proof, no counterexample exists

    model, prop, box_min, _ = linear_instance(tmp_path, 5.0)
    assert box_min < 0
    res = vnnlib_check(model, prop)
    check_counterexample(model, prop, res)


def test_small_relu_nets_never_contradict_a_grid_search(tmp_path: Path) -> None:
    """2-input ReLU nets: a dense grid finds violations where they exist (wide enough); lipcert's
    unsat must never meet a grid violation and every sat must check out."""
    rng = np.random.default_rng(3)
    seen = {s: 0 for s in STATUSES}
    for trial in range(12):
        ws = [rng.normal(size=(8, 2)), rng.normal(size=(8, 8)) / 2, rng.normal(size=(3, 8))]
        bs = [rng.normal(size=8) * 0.3, rng.normal(size=8) * 0.3, rng.normal(size=3)]
        model = tmp_path / f"relu{trial}.onnx"
        ws = write_mlp(model, ws, bs)
        bs = [np.asarray(b, np.float32).astype(np.float64) for b in bs]

        def f(x: np.ndarray) -> np.ndarray:
            for k, (w, b) in enumerate(zip(ws, bs)):
                x = x @ w.T + b
                x = np.maximum(x, 0) if k < 2 else x
            return x

        x0 = rng.uniform(-1, 1, 2)
        y0 = f(x0)
        top = int(np.argmax(y0))
        other = int(np.argsort(y0)[-2])
        eps = float(rng.choice([0.01, 0.1, 0.5]))
        lower, upper = x0 - eps, x0 + eps
        prop = parse_vnnlib(declare(2, 3) + box(lower, upper) + f"(assert (>= Y_{other} Y_{top}))\n")
        res = vnnlib_check(model, prop)
        seen[res.status] += 1
        g = np.stack(np.meshgrid(*[np.linspace(lo, hi, 201) for lo, hi in zip(lower, upper)]), -1).reshape(-1, 2)
        grid_violation = prop.violated_by(f(g)).any()
        if res.status == "unsat":
            assert not grid_violation
        if res.status == "sat":
            check_counterexample(model, prop, res)
    assert seen["unsat"] >= 2 and seen["timeout"] == 0


def test_timeout_and_result_file(tmp_path: Path) -> None:
    model, prop, _, _ = linear_instance(tmp_path, 1e-3)
    assert vnnlib_check(model, prop, timeout=1e-9).status == "timeout"
    model, prop, _, _ = linear_instance(tmp_path, 5.0)
    res = vnnlib_check(model, prop)
    out = tmp_path / "result.txt"
    res.write(out)
    lines = out.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    values = dict(line.strip(" ()").split() for line in lines[1:])
    np.testing.assert_array_equal([float(values[f"X_{i}"]) for i in range(5)], res.counterexample[0])
    np.testing.assert_array_equal([float(values[f"Y_{j}"]) for j in range(3)], res.counterexample[1])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, prop, _, _ = linear_instance(tmp_path, 1e-3)
    path = tmp_path / "p.vnnlib"
    path.write_text(declare(5, 3) + box(prop.lower, prop.upper) + "(assert (>= Y_1 Y_0))\n")
    assert main(["vnnlib", str(model), str(path), "--out", str(tmp_path / "r.txt")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "unsat"
    assert (tmp_path / "r.txt").read_text() == "unsat\n"
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(declare(5, 3) + "(assert (<= (* Y_0 Y_1) 0))\n")
    assert main(["vnnlib", str(model), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.vnnlib:9: nonlinear term" in err


@pytest.mark.slow
def test_vnncomp_scripts(tmp_path: Path) -> None:
    """prepare_instance.sh, then run_instance.sh writes the result file; the pre-filter answers a
    sat instance itself and hands an unknown one to the next tool (five interpreter start-ups)."""
    model, prop, _, _ = linear_instance(tmp_path, 1e-3)
    path = tmp_path / "p.vnnlib"
    path.write_text(declare(5, 3) + box(prop.lower, prop.upper) + "(assert (>= Y_1 Y_0))\n")
    scripts = REPO / "vnncomp"
    nxt = tmp_path / "next_run_instance.sh"
    nxt.write_text('#!/bin/sh\necho "next tool $6" > "$5"\n')
    nxt.chmod(0o755)
    env = {**os.environ, "LIPCERT_PYTHON": sys.executable, "NEXT_RUN_INSTANCE": str(nxt)}

    def run(script: str, *args: str) -> None:
        done = subprocess.run(["bash", str(scripts / script), "v1", "toy", *args], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr

    run("prepare_instance.sh", str(model), str(path))
    run("run_instance.sh", str(model), str(path), str(tmp_path / "s.txt"), "60")
    assert (tmp_path / "s.txt").read_text() == "unsat\n"
    sat_model, sat_prop, _, _ = linear_instance(tmp_path, 5.0)
    path.write_text(declare(5, 3) + box(sat_prop.lower, sat_prop.upper) + "(assert (>= Y_1 Y_0))\n")
    run("prefilter_run_instance.sh", str(sat_model), str(path), str(tmp_path / "f.txt"), "100")
    assert (tmp_path / "f.txt").read_text().startswith("sat\n((X_0 ")
    _, mid_prop, _, _ = linear_instance(tmp_path, mid_eps(tmp_path))
    path.write_text(declare(5, 3) + box(mid_prop.lower, mid_prop.upper) + "(assert (>= Y_1 Y_0))\n")
    run("prefilter_run_instance.sh", str(sat_model), str(path), str(tmp_path / "u.txt"), "100")  # unknown
    assert (tmp_path / "u.txt").read_text().startswith("next tool ")


# ---------------------------------------------------------------------------------- VNN-COMP 2021
def recorded(shared_data: Path) -> dict[tuple[str, str], str]:
    out = {}
    for table in (shared_data / "models").glob("*/vnncomp2021_results.csv"):
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                out[(f"{table.parent.name}/{row['onnx']}", f"{table.parent.name}/{row['vnnlib']}")] = \
                    row["vnncomp2021_result"]
    return out


INSTANCES = [   # (model, property, lipcert's answer with the default settings; None: unsat or unknown)
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/vnnlib/prop_7_0.03.vnnlib", "sat"),
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/vnnlib/prop_11_0.03.vnnlib", "unsat"),
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/vnnlib/prop_0_0.03.vnnlib", None),
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/vnnlib/prop_1_0.05.vnnlib", "sat"),
    ("eran_sigmoid_6x200/ffnnSIGMOID__Point_6x200.onnx",
     "eran_sigmoid_6x200/vnnlib/mnist_spec_idx_7259_eps_0.01200.vnnlib", "sat"),
    ("oval21_cifar_base_kw/cifar_base_kw.onnx",
     "oval21_cifar_base_kw/vnnlib/cifar_base_kw-img1697-eps0.0014379084967320263.vnnlib", "sat"),
]


@pytest.mark.data
@pytest.mark.parametrize(("onnx_file", "vnnlib_file", "expected"), INSTANCES)
def test_vnncomp2021_instances_agree_with_recorded_outcomes(shared_data: Path, onnx_file: str, vnnlib_file: str,
                                                             expected: str | None) -> None:
    """Never unsat on a recorded violation, never sat on a recorded proof; every sat checked
    with onnxruntime; and the answers lipcert gives today (regressions fail).

    Compared modulo ``timeout``: a timeout is never wrong (the instances take seconds, but a loaded
    machine may exceed the budget), so it skips the comparison with today's answer and says so; a
    wrong definite answer always fails.
    """
    outcome = recorded(shared_data)[(onnx_file, vnnlib_file)]
    model, path = shared_data / "models" / onnx_file, shared_data / "models" / vnnlib_file
    res = vnnlib_check(model, path, timeout=120)
    assert res.status in STATUSES
    assert res.status != {"violated": "unsat", "holds": "sat"}[outcome]
    if res.status == "sat":
        check_counterexample(model, read_vnnlib(path), res)
    if res.status == "unsat":
        assert res.proven.all() and (res.radii > res.radius).all()
    if res.status == "timeout":
        pytest.skip(f"timeout ({res.note}): not wrong, but not compared with today's answer "
                    f"{expected or 'unsat or unknown'}")
    assert res.status == expected if expected else res.status in ("unsat", "unknown")


def test_a_counterexample_is_finite_in_the_box_and_violating() -> None:
    """The last gate before ``sat``: a NaN bound once let an infinite input through as a counterexample."""
    from lipcert.vnncomp import counterexample_holds

    prop = parse_vnnlib(declare(2, 2) + box(np.zeros(2), np.ones(2)) + "(assert (>= Y_0 Y_1))\n")
    assert counterexample_holds(prop, np.array([0.5, 1.0]), np.array([2.0, 1.0]))
    assert not counterexample_holds(prop, np.array([0.5, np.inf]), np.array([2.0, 1.0]))    # not finite
    assert not counterexample_holds(prop, np.array([0.5, 1.5]), np.array([2.0, 1.0]))       # outside the box
    assert not counterexample_holds(prop, np.array([0.5, 1.0]), np.array([1.0, 2.0]))       # not violating
    assert not counterexample_holds(prop, np.array([0.5, 1.0]), np.array([np.nan, 1.0]))   # output not finite
    assert not counterexample_holds(prop, np.array([0.5]), np.array([2.0, 1.0]))            # wrong size
