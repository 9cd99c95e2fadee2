"""Fuzz tests: whatever arguments and weights come in, the outcome is a result or a LipcertError.

Hypothesis draws argument lists for the command line (subcommands, flags, odd values) and weight
and activation specifications for ``Network.from_weights`` and ``lipcert.load``.  Draws are
derandomized (``derandomize=True``, no example database): every run, on every machine, tries the
same examples, and a failure prints the example that broke.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lipcert
from lipcert.cli import main
from lipcert.errors import LipcertError

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model and data set, and a few broken files, that the drawn command lines refer to."""
    from lipcert.npz import save_npz

    root = tmp_path_factory.mktemp("fuzz")
    gen = np.random.default_rng(0)
    net = lipcert.Network.from_weights([gen.normal(size=(5, 4)), gen.normal(size=(3, 5))], input_shape=(4,))
    save_npz(net, root / "net.npz")
    np.savez(root / "data.npz", x=gen.uniform(size=(6, 4)), y=gen.integers(0, 3, size=6))
    (root / "junk.onnx").write_bytes(gen.bytes(64))
    (root / "text.pt").write_text("not a model")
    (root / "empty.npz").write_bytes(b"")
    return {"net": root / "net.npz", "data": root / "data.npz", "junk": root / "junk.onnx",
            "text": root / "text.pt", "empty": root / "empty.npz", "root": root}


_NASTY = st.sampled_from(["0", "-1", "1/0", "0/0", "nan", "inf", "0.5,1", ",", "", "abc", "1e400", "36/255", "2",
                          "l3", "naive", "gc(2.5)", "combined,naive", "1,2,3", "-0", "1,,2", "3,0"])
_VALUES = st.one_of(_NASTY, _NASTY, _NASTY, st.text(alphabet="0123456789.,/-einfa", max_size=6))
_SKIP = {"-h", "--help", "--out", "--dataset", "--data-dir", "--no-plots", "--attack", "--local",  # slow or set below
         "--workers", "--scheduler"}  # start or wait for a Dask cluster: tests/test_distributed.py


def _flags() -> dict[str, list[tuple[str, bool]]]:
    """Every option of every subcommand, read from the parser itself: (flag, takes a value)."""
    import argparse

    from lipcert.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [(o, a.nargs != 0) for a in p._actions for o in a.option_strings if o not in _SKIP]
            for name, p in sub.choices.items()}


_OPTIONS = _flags()


@st.composite
def command_lines(draw: st.DrawFn, files: dict[str, Path], out: Path) -> list[str]:
    command = draw(st.sampled_from(["bound", "certify", "certify", "certify", "inspect", "report", "vnnlib"]))
    model = str(files[draw(st.sampled_from(["net", "junk", "text", "empty", "data"]))])
    argv = [command, model]
    if command == "certify":
        argv += ["--dataset", draw(st.sampled_from([str(files["data"]), "mnsit", str(files["net"])])),
                 "--out", str(out / f"run{draw(st.integers(0, 3))}"), "--no-plots"]
    if command == "report":
        argv = [command, str(out / f"run{draw(st.integers(0, 3))}"), "--out", str(out / "cmp")]
    if command == "vnnlib":
        argv.append(str(files[draw(st.sampled_from(["data", "text"]))]))
    for flag, takes_value in draw(st.lists(st.sampled_from(_OPTIONS[command]), max_size=4, unique=True)):
        argv += [flag, draw(_VALUES)] if takes_value else [flag]
    return argv


def test_the_command_line_answers_or_refuses(files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        argv = data.draw(command_lines(files, tmp_path))
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refuses the arguments: one usage line, status 2
            assert exc.code == 2, argv
            return
        finally:
            err = capsys.readouterr().err
        assert code in (0, 1, 2), argv
        assert "Traceback" not in err, (argv, err)

    run()


_ENTRIES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-3, 3),
                     st.complex_numbers(max_magnitude=2), st.text(max_size=2), st.none(), st.booleans())
_MATRICES = st.one_of(
    st.integers(1, 4).flatmap(lambda r: st.integers(1, 4).flatmap(
        lambda c: st.lists(st.lists(_ENTRIES, min_size=c, max_size=c), min_size=r, max_size=r))),
    st.lists(_ENTRIES, max_size=4), _ENTRIES,
    st.integers(1, 4).map(lambda n: np.ones((n, 3))), st.just(np.zeros((2, 2, 2))), st.just(torch.eye(3)))
_ACTIVATIONS = st.one_of(st.sampled_from(["relu", "tanh", "sigmoid", "leaky_relu(0.1)", "leaky_relu(x)", "elu",
                                          "gelu", "silu", "magic", "", "none"]),
                         st.tuples(_ENTRIES, _ENTRIES), st.lists(st.sampled_from(["relu", "tanh"]), max_size=3),
                         _ENTRIES)


@FUZZ
@given(weights=st.lists(_MATRICES, max_size=3), biases=st.one_of(st.none(), st.lists(_MATRICES, max_size=3)),
       activation=_ACTIVATIONS, shape=st.one_of(st.none(), st.lists(st.integers(-1, 4), max_size=3)))
def test_from_weights_builds_or_refuses(weights: list, biases: list | None, activation: object,  # type: ignore[type-arg]
                                        shape: list[int] | None) -> None:
    try:
        net = lipcert.Network.from_weights(weights, biases, activation, input_shape=shape)  # type: ignore[arg-type]
    except LipcertError:
        return
    bound = lipcert.lipschitz(net, "naive")
    assert bound.value >= 0
    assert all(np.isfinite(w.numpy()).all() for w in net.weights)


@FUZZ
@given(source=st.one_of(st.text(max_size=8), st.integers(), st.none(), st.just(torch.nn.Linear(3, 2)),
                        st.just(torch.nn.Sequential()), st.lists(st.integers(), max_size=2)),
       input_shape=st.one_of(st.none(), st.lists(st.integers(-1, 4), max_size=3)),
       mean=st.one_of(st.none(), st.floats(allow_nan=True), st.lists(st.floats(), max_size=2)))
def test_load_returns_a_network_or_refuses(source: object, input_shape: list[int] | None, mean: object) -> None:
    try:
        net = lipcert.load(source, input_shape=input_shape, mean=mean)  # type: ignore[arg-type]
    except LipcertError:
        return
    assert isinstance(net, lipcert.Network)
