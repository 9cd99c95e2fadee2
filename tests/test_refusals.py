"""Careless and hostile input gets a named error, never a traceback, a misleading message or a silent guess.

Broken files, bad arguments, API misuse, outputs that are no logit vector: each case names the
problem; the CLI prints one line and exits 2.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert import Network
from lipcert.cli import main
from lipcert.errors import (InputRangeWarning, InvalidArgumentError, InvalidRadiusError, InvalidSlopeError,
                            InvalidWeightsError, LipcertError, ModelLoadError, NonFiniteWeightsError,
                            ShapeMismatchError, UnknownActivationError, UnknownMethodError)

DATA = Path(lipcert.__file__).parent / "data"
MODEL = DATA / "demo_model.onnx"
SAMPLES = DATA / "demo_samples.npz"


def _fails(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def demo() -> tuple[Network, np.ndarray, np.ndarray]:
    data = np.load(SAMPLES)
    return lipcert.load(MODEL), data["x"][:6].astype(np.float64) / 255, data["y"][:6]


class _ScalarOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).sum()


# ------------------------------------------------------------------------- the command line
def test_broken_model_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "empty.npz")
    _fails(["bound", str(tmp_path / "empty.npz")], "holds no weight arrays", capsys)
    assert main(["inspect", str(tmp_path / "empty.npz")]) == 2  # inspect says what it could not build, on stdout
    assert "not built: " in capsys.readouterr().out
    (tmp_path / "text.pt").write_text("hello world\n")
    _fails(["bound", str(tmp_path / "text.pt")], "text.pt is not a readable torch file", capsys)
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(300))
    _fails(["bound", str(tmp_path / "random.pt")], "random.pt is not a readable torch file", capsys)
    with pytest.raises(ModelLoadError, match="text.pt is not a readable torch file"):  # weights of a class, too
        lipcert.load("lipcert.reference_models:mnist_cnn_a", weights=tmp_path / "text.pt")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _fails(["bound", str(tmp_path / "empty.onnx")], "empty.onnx is empty (0 bytes)", capsys)
    (tmp_path / "folder.onnx").mkdir()
    _fails(["bound", str(tmp_path / "folder.onnx")], "folder.onnx is a directory, not a model file", capsys)


def test_an_onnx_file_under_pt_is_read_as_onnx(tmp_path: Path) -> None:
    shutil.copy(MODEL, tmp_path / "model.pt")
    x = np.load(SAMPLES)["x"][:4].astype(np.float64) / 255
    np.testing.assert_allclose(lipcert.load(tmp_path / "model.pt")(x), lipcert.load(MODEL)(x), rtol=1e-12)


def test_vnnlib_refuses_a_model_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [f"(declare-const X_{i} Real)" for i in range(784)] + [f"(declare-const Y_{i} Real)" for i in range(10)]
    lines += [f"(assert (>= X_{i} 0.5))\n(assert (<= X_{i} 0.6))" for i in range(784)] + ["(assert (>= Y_1 Y_0))"]
    prop = tmp_path / "p.vnnlib"
    prop.write_text("\n".join(lines) + "\n")
    from lipcert.npz import save_npz

    save_npz(lipcert.load(MODEL), tmp_path / "m.npz")
    _fails(["vnnlib", str(tmp_path / "m.npz"), str(prop)], "is not an ONNX model (its content: npz)", capsys)
    _fails(["vnnlib", str(MODEL), str(prop), "--out", str(tmp_path)], "is a folder; give the path of the result",
           capsys)


def test_certify_arguments_are_checked_before_anything_is_written(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base = ["certify", str(MODEL), "--dataset", str(SAMPLES), "--n", "20"]
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # argparse's own one-line usage error, exit status 2
        main([*base, "--eps", "1/0", "--out", str(out)])
    assert "division by zero in '1/0'" in capsys.readouterr().err
    _fails([*base, "--method", ",", "--eps", "0.1", "--out", str(out)], "--method ',' names no method", capsys)
    _fails([*base, "--method", "magic", "--eps", "0.1", "--out", str(out)], "unknown method 'magic'", capsys)
    np.savez(tmp_path / "zero.npz", x=np.zeros((0, 1, 28, 28)), y=np.zeros(0, dtype=np.int64))
    _fails(["certify", str(MODEL), "--dataset", str(tmp_path / "zero.npz"), "--eps", "0.1", "--out", str(out)],
           "zero.npz holds no inputs (0 rows)", capsys)
    assert not out.exists()  # no records.jsonl or empty run folder left behind
    (tmp_path / "afile").write_text("")
    _fails([*base, "--eps", "0.1", "--out", str(tmp_path / "afile")], "is a file, not a folder", capsys)
    _fails([*base, "--eps", "0.1", "--out", str(tmp_path / "afile" / "x")], "cannot be created", capsys)
    _fails(["report", str(tmp_path), "--out", str(tmp_path / "afile")], "is a file, not a folder", capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _fails(["certify", str(MODEL), "--dataset", str(SAMPLES), "--eps", "0.1", "--out", str(locked / "x")],
               "cannot be written", capsys)
    finally:
        locked.chmod(0o755)


def test_unwritable_out_is_refused_before_the_model_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import tempfile

    import lipcert.cli.certify as cli

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(cli, "load_model", never)
    _fails(["certify", str(MODEL), "--dataset", str(SAMPLES), "--eps", "0.1", "--out", str(tmp_path / "x")],
           "cannot be written", capsys)


def test_report_json_with_wrong_types_is_refused() -> None:
    from lipcert.report import ReportError, validate_record
    from lipcert.report.schema import REPORT_SCHEMA, SCHEMA_VERSION

    good = {k: None for k in REPORT_SCHEMA} | {
        "schema_version": SCHEMA_VERSION, "norm": "2", "n_inputs": 3, "clean_accuracy": 1.0, "model": {},
        "dataset": {}, "eps": [0.5], "methods": ["naive"], "lipschitz": {"naive": {"value": 2.0}},
        "certified_accuracy": {"naive": [0.5], "best": [0.5]}, "radius_stats": {"naive": {"median": 0.1}}}
    validate_record(good)
    for field, bad, message in [("eps", "0.5", "eps must be a list of numbers"),
                                ("n_inputs", "3", "n_inputs must be an integer"),
                                ("lipschitz", {}, "every method needs its bound"),
                                ("certified_accuracy", {"naive": ["x"]}, "must be a list of numbers"),
                                ("norm", "l3", "norm must be '2' or 'inf'"),
                                ("attack", {"eps": [0.1]}, "attack must be null or an object")]:
        with pytest.raises(ReportError, match=message):
            validate_record(good | {field: bad})


# ------------------------------------------------------------------------- the Python API
def test_api_misuse_gets_named_errors(demo: tuple[Network, np.ndarray, np.ndarray]) -> None:
    net, x, y = demo
    for method in (None, 5, ["naive", "eclipse-fast"]):
        with pytest.raises(UnknownMethodError):
            lipcert.lipschitz(net, method)  # type: ignore[arg-type]
    for options in (["a"], "fast"):
        with pytest.raises(LipcertError, match="options must be a mapping"):
            lipcert.lipschitz(net, "combined", options=options)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="input_shape"):
        lipcert.lipschitz(torch.nn.Sequential(torch.nn.Linear(3, 2)), "naive")
    for activation in (5, None):
        with pytest.raises(UnknownActivationError, match="activation must be a name"):
            Network.from_weights([np.eye(3), np.eye(3)], activation=activation)  # type: ignore[arg-type]
    with pytest.raises(InvalidSlopeError, match="two numbers"):
        Network.from_weights([np.eye(3), np.eye(3)], activation=("a", 1))  # type: ignore[arg-type]
    generated = Network.from_weights(w for w in (np.eye(3), 2 * np.eye(3)))
    assert generated.widths == (3, 3, 3)
    with pytest.raises(InvalidArgumentError, match="samples must be an integer >= 0, got -1"):
        lipcert.lower_bound(net, samples=-1)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="asked for CUDA"):
            lipcert.lipschitz(net, "naive", device="cuda")
    with pytest.raises(InvalidArgumentError, match="device must be"):
        lipcert.lipschitz(net, "naive", device="gpu7")
    cert = lipcert.certify(net, x, y, method="naive")
    with pytest.raises(InvalidRadiusError, match="eps must be a number"):
        cert.certified_accuracy("abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="tolerance must be a finite number"):
        lipcert.certify(net, x, y, method="naive", tolerance="a")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="timeout must be a finite number"):
        lipcert.vnnlib_check(MODEL, "p.vnnlib", timeout="x")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- no misleading messages
def test_non_finite_and_complex_weights_are_named(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(MODEL))
    init = model.graph.initializer[0]
    values = numpy_helper.to_array(init).copy()
    values.flat[3] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(NonFiniteWeightsError, match=rf"initializer '{init.name}' \(used by .* node .*\) has 1 "
                                                    "non-finite weights"):
        lipcert.load(tmp_path / "nan.onnx")
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with torch.no_grad():
        module[0].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="parameter '0.weight' has 1 non-finite"):
        lipcert.load(module, input_shape=(4,))
    with pytest.raises(InvalidWeightsError, match="weight 1 is complex"):
        Network.from_weights([np.eye(3) * (1 + 1j), np.eye(3)])


def test_outputs_that_are_not_one_logit_vector_are_refused(demo: tuple[Network, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ModelLoadError, match=r"returns an output of shape \(\) for a batch"):
        lipcert.load(_ScalarOut(), input_shape=(4,))
    grid = lipcert.load(torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.Unflatten(1, (2, 5))), input_shape=(4,))
    with pytest.raises(ShapeMismatchError, match=r"output has shape \(2, 5\) per input"):
        lipcert.certify(grid, np.zeros((2, 4)), np.zeros(2, dtype=np.int64), method="naive")
    single = Network.from_weights([np.ones((3, 4)), np.ones((1, 3))])
    with pytest.raises(ShapeMismatchError, match="a single logit z has no margin"):
        lipcert.certify(single, np.ones((2, 4)), np.zeros(2, dtype=np.int64), method="naive")
    # the suggested two-logit network certifies the sign: radius = |z| / Lip(z) with margin 2|z|
    w, b = single.weights[-1].numpy(), single.biases[-1].numpy()
    pair = single.with_last_layer(np.vstack([-w, w]), np.concatenate([-b, b]))
    cert = lipcert.certify(pair, np.ones((2, 4)), np.ones(2, dtype=np.int64), method="naive")
    assert np.all(np.isfinite(cert.radii["naive"])) and np.all(cert.radii["naive"] > 0)


def test_unknown_data_set_and_inputs_out_of_range_are_said(
        demo: tuple[Network, np.ndarray, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net, x, y = demo
    _fails(["certify", str(MODEL), "--dataset", "mnsit", "--out", str(tmp_path / "r")],
           "unknown data set 'mnsit'", capsys)
    with pytest.warns(InputRangeWarning, match=r"inputs range over \[0, 255\] but the model declares inputs in "
                                               r"\[0, 1\]"):
        lipcert.certify(net, x * 255, y, method="naive")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        lipcert.certify(net, x, y, method="naive")  # in range: silent
    pixels = tmp_path / "pixels.npz"
    np.savez(pixels, x=(x * 255).astype(np.float32), y=y)
    assert main(["certify", str(MODEL), "--dataset", str(pixels), "--n", "10", "--eps", "0.1", "--method", "naive",
                 "--no-plots", "--out", str(tmp_path / "px")]) == 0
    err = capsys.readouterr().err
    assert "lipcert certify: warning: the inputs range over [0, 255]" in err
    assert "--n 10 asks for more inputs than the data set holds; certifying all 6" in err


def test_a_failed_download_leaves_no_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert import datasets
    from lipcert.datasets.download import download

    with pytest.raises(LipcertError, match="could not download"):
        download((tmp_path / "nothing-here").as_uri(), tmp_path / "data" / "mnist" / "f.gz", ("sha256:00",))
    assert not (tmp_path / "data").exists()
    with pytest.raises(LipcertError, match="MNIST test data not found"):
        datasets.load("mnist", root=tmp_path / "data", download=False)
    assert not (tmp_path / "data").exists()


def test_more_api_misuse(demo: tuple[Network, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    from lipcert.errors import RunFolderError

    net, x, y = demo
    for method in (5, [], "", ","):
        with pytest.raises(UnknownMethodError):
            lipcert.certify(net, x, y, method=method)  # type: ignore[arg-type]
    for bound in (5, [], {}):
        with pytest.raises(InvalidArgumentError, match="bound must be a LipschitzBound"):
            lipcert.certify(net, x, y, bound=bound)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="local must be"):
        lipcert.certify(net, x, y, method="naive", local=5)  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="no inputs"):
        lipcert.certify(net, x[:0], y[:0], method="naive")
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunFolderError, match="cannot create the folder"):
        lipcert.certify(net, x, y, method="naive", records=tmp_path / "afile" / "records.jsonl")


def test_vnnlib_out_never_overwrites_an_input_or_a_foreign_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n")
    _fails(["vnnlib", str(model), str(prop), "--out", str(model)], "is one of the command's own input files", capsys)
    _fails(["vnnlib", str(model), str(prop), "--out", str(prop)], "is one of the command's own input files", capsys)
    (tmp_path / "notes.txt").write_text("my notes\n")
    _fails(["vnnlib", str(model), str(prop), "--out", str(tmp_path / "notes.txt")], "is not an earlier result",
           capsys)
    assert model.read_bytes() == MODEL.read_bytes() and (tmp_path / "notes.txt").read_text() == "my notes\n"
    import tempfile

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    _fails(["vnnlib", str(model), str(prop), "--out", str(tmp_path / "r.txt")], "cannot be written", capsys)
    _fails(["report", str(tmp_path), "--out", str(tmp_path / "cmp")], "cannot be written", capsys)


def test_certify_applies_the_memory_limit_to_its_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _fails(["certify", str(MODEL), "--dataset", str(SAMPLES), "--n", "10", "--eps", "0.1", "--max-dense-gb", "0.001",
            "--out", str(out)], "method combined on widths [784, 100, 100, 10] needs about", capsys)
    assert not out.exists()
