"""The certifier: radii against independent computations, soundness against the attack, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from _certify_models import MNIST_MLPS, lipschitz_mlp, mnist
from lipcert import certification
from lipcert.attacks import attack, soundness_violations
from lipcert.errors import (BoundMismatchError, InvalidArgumentError, InvalidNormError, InvalidRadiusError, ResumeError, ShapeMismatchError,
                            UnknownMethodError)


def random_net(rng: np.random.Generator, activation: str = "relu", d: int = 12, k: int = 5) -> lipcert.Network:
    widths = [d, int(rng.integers(8, 40)), int(rng.integers(8, 40)), k]
    weights = [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(widths, widths[1:])]
    biases = [rng.normal(size=o) * 0.3 for o in widths[1:]]
    return lipcert.Network.from_weights(weights, biases, activation)


def longdouble_logits(net: lipcert.Network, x: np.ndarray) -> np.ndarray:
    """The forward pass in x87 extended precision (64-bit mantissa), as a reference for float64 rounding."""
    z = x.reshape(len(x), -1).astype(np.longdouble)
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = np.einsum("ij,bj->bi", w.numpy().astype(np.longdouble), z) + b.numpy().astype(np.longdouble)
        if k < len(net.activations):
            name = net.activations[k].name
            z = np.maximum(z, 0) if name == "relu" else 1 / (1 + np.exp(-z)) if name == "sigmoid" else np.tanh(z)
    return z


@pytest.mark.parametrize("activation", ("relu", "sigmoid", "tanh"))
def test_margins_match_the_forward_pass_and_the_error_bound_covers_rounding(
        activation: str, rng: np.random.Generator) -> None:
    net = random_net(rng, activation)
    x = rng.normal(size=(200, 12)) * 3
    y = rng.integers(0, 5, size=200)
    cert = lipcert.certify(net, x, y, method="naive")
    f = net(x)
    others = np.where(np.eye(5, dtype=bool)[y], -np.inf, f)
    # certify's forward pass is its own code: its margins agree with net(x) to within its rounding bound
    assert np.all(np.abs(cert.margin - (f[np.arange(200), y] - others.max(axis=1))) <= 2 * cert.logit_error)
    np.testing.assert_array_equal(cert.prediction, f.argmax(axis=1))
    if np.finfo(np.longdouble).nmant > 52:
        exact = longdouble_logits(net, x)
        assert np.all(np.abs(f - exact) <= cert.logit_error[:, None])
    assert np.all(cert.logit_error < 1e-9)  # a bound, but not a uselessly loose one


def test_radius_is_the_pairwise_margin_formula_and_linf_divides_by_sqrt_d(rng: np.random.Generator) -> None:
    net = random_net(rng, "relu", d=20, k=6)
    x = rng.normal(size=(300, 20))
    y = np.asarray(net(x)).argmax(axis=1)
    y[:40] = rng.integers(0, 6, size=40)
    cert = lipcert.certify(net, x, y, method="naive")
    # independent: L_yj = ||W_L[y] - W_L[j]|| prod_k ||W_k|| (LipNaive)
    w = [m.numpy() for m in net.weights]
    scale = np.prod([np.linalg.norm(m, 2) for m in w[:-1]])
    f = net(x)
    expect = np.zeros(300)
    for i in range(300):
        if f[i].argmax() != y[i]:
            continue
        expect[i] = min((f[i, y[i]] - f[i, j]) / (np.linalg.norm(w[-1][y[i]] - w[-1][j]) * scale)
                        for j in range(6) if j != y[i])
    expect = np.clip(expect, 0, None)
    r = cert.radii["naive"]
    assert np.all(r <= expect)
    np.testing.assert_allclose(r, expect, rtol=1e-6, atol=1e-12)
    assert np.all(r[f.argmax(axis=1) != y] == 0)
    linf = lipcert.certify(net, x, y, method="naive", norm="linf")
    np.testing.assert_allclose(linf.radius, r / math.sqrt(20), rtol=1e-12)


def test_certified_accuracy_is_monotone_and_below_clean_accuracy(rng: np.random.Generator) -> None:
    net = random_net(rng)
    x = rng.normal(size=(500, 12))
    y = rng.integers(0, 5, size=500)
    y[:300] = np.asarray(net(x[:300])).argmax(axis=1)
    cert = lipcert.certify(net, x, y, method="eclipse-fast,combined")
    grid = np.linspace(0, 2 * cert.radius.max(), 50)
    for method in (*cert.methods, None):
        acc = cert.certified_accuracy(grid, method)
        assert np.all(np.diff(acc) <= 0)
        assert acc[0] <= cert.clean_accuracy
        assert acc[-1] == 0
        assert acc[0] == cert.correct.mean()  # radius >= 0 for every correct input
    stats = cert.radius_stats("combined")
    r = cert.radii["combined"][cert.correct]
    assert stats["median"] == np.median(r) and stats["mean"] == r.mean()


def test_bad_inputs_raise_named_errors(rng: np.random.Generator) -> None:
    net = random_net(rng)
    x, y = rng.normal(size=(10, 12)), rng.integers(0, 5, size=10)
    with pytest.raises(ShapeMismatchError, match="out of range"):
        lipcert.certify(net, x, np.full(10, 5))
    with pytest.raises(ShapeMismatchError, match="out of range"):
        lipcert.certify(net, x, np.full(10, -1))
    with pytest.raises(ShapeMismatchError, match="shape"):
        lipcert.certify(net, rng.normal(size=(10, 13)), y)
    with pytest.raises(ShapeMismatchError, match="labels must have shape"):
        lipcert.certify(net, x, y[:9])
    with pytest.raises(ShapeMismatchError, match="integers"):
        lipcert.certify(net, x, y + 0.5)
    with pytest.raises(ShapeMismatchError, match="input 4 contains NaN or infinite"):
        lipcert.certify(net, np.where((np.arange(10) == 4)[:, None] & (np.arange(12) == 3), np.nan, x), y)
    with pytest.raises(ShapeMismatchError, match="numeric array"):
        lipcert.certify(net, [["a"] * 12] * 10, y)
    with pytest.raises(ShapeMismatchError, match="labels must be integers"):
        lipcert.certify(net, x, y > 2)
    assert lipcert.certify(net, x.astype(np.int16), y, method="naive").radius.shape == (10,)
    with pytest.raises(InvalidNormError, match="unsupported norm"):
        lipcert.certify(net, x, y, norm=3)
    with pytest.raises(UnknownMethodError):
        lipcert.certify(net, x, y, method="fastest")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        lipcert.certify(net, x, y, batch_size=0)
    cert = lipcert.certify(net, x, y)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InvalidRadiusError, match="eps must be finite and >= 0"):
            cert.certified_accuracy([0.1, bad])


def test_a_given_bound_is_used_as_is(rng: np.random.Generator) -> None:
    net = random_net(rng)
    x, y = rng.normal(size=(50, 12)), rng.integers(0, 5, size=50)
    bound = lipcert.lipschitz(net, "eclipse-fast")
    a = lipcert.certify(net, x, y, bound=bound)
    b = lipcert.certify(net, x, y, method="eclipse-fast")
    assert a.methods == ("eclipse-fast",) and not any(k.startswith("bound:") for k in a.timings)
    np.testing.assert_array_equal(a.radius, b.radius)


def test_a_bound_of_another_network_is_refused(rng: np.random.Generator) -> None:
    """A bound computed before a reload with another normalization (or other weights) would give radii
    its network does not have: certify refuses it by the network's fingerprint."""
    net = random_net(rng)
    x, y = rng.uniform(size=(20, 12)), rng.integers(0, 5, size=20)
    bound = lipcert.lipschitz(net, "eclipse-fast")
    normalized = lipcert.Network.from_weights([net.weights[0] / 0.3081, *net.weights[1:]],
                                              [net.biases[0] - net.weights[0].sum(1) * 0.1307 / 0.3081,
                                               *net.biases[1:]], "relu")
    scaled = lipcert.Network.from_weights([w * 10 for w in net.weights], list(net.biases), "relu")
    for other in (normalized, scaled):
        assert lipcert.lipschitz(other, "eclipse-fast").value > bound.value  # the slip gives too large radii
        with pytest.raises(BoundMismatchError, match="computed for another network"):
            lipcert.certify(other, x, y, bound=bound)
        with pytest.raises(BoundMismatchError):
            lipcert.certify(other, x, y, bound={"mine": bound})
    unmarked = dataclasses.replace(bound, network="")
    with pytest.raises(BoundMismatchError, match="carries no network fingerprint"):
        lipcert.certify(net, x, y, bound=[unmarked])
    same = lipcert.Network.from_weights([w.clone() for w in net.weights], [b.clone() for b in net.biases], "relu")
    assert same.fingerprint() == net.fingerprint() == bound.network
    assert lipcert.certify(same, x, y, bound=bound).methods == ("eclipse-fast",)


def test_resume_continues_without_recomputing_finished_inputs(
        tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_net(rng, "tanh")
    x, y = rng.normal(size=(530, 12)), rng.integers(0, 5, size=530)
    records = tmp_path / "records.jsonl"
    full = lipcert.certify(net, x, y, method="naive,combined", batch_size=100, records=records)
    lines = records.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 530 and json.loads(lines[0])["record"] == "header"
    # interrupted in the middle of writing input 257: keep 256 full records and half a line
    records.write_bytes(b"".join(lines[:257]) + lines[257][: len(lines[257]) // 2])
    computed = []
    real = certification.forward_error

    def counting(layers, batch):  # type: ignore[no-untyped-def]
        computed.append(batch.shape[0])
        return real(layers, batch)

    monkeypatch.setattr(certification, "forward_error", counting)
    resumed = lipcert.certify(net, x, y, method="naive,combined", batch_size=100, records=records, resume=True)
    assert resumed.resumed == 200  # whole batches only, so the remaining batches are the same as before
    assert sum(computed) == 330
    for field in ("index", "label", "prediction", "margin", "logit_error"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(full, field))
    for m in full.methods:
        np.testing.assert_array_equal(resumed.radii[m], full.radii[m])
    assert records.read_bytes() == b"".join(lines)
    computed.clear()
    again = lipcert.certify(net, x, y, method="naive,combined", batch_size=100, records=records, resume=True)
    assert again.resumed == 530 and sum(computed) == 0  # every batch is complete: nothing is redone


def test_resume_refuses_records_of_another_run(tmp_path: Path, rng: np.random.Generator) -> None:
    net = random_net(rng)
    x, y = rng.normal(size=(40, 12)), rng.integers(0, 5, size=40)
    records = tmp_path / "r.jsonl"
    lipcert.certify(net, x, y, method="naive", records=records, batch_size=10)
    with pytest.raises(ResumeError, match="exists"):
        lipcert.certify(net, x, y, method="naive", records=records)
    with pytest.raises(ResumeError, match="norm"):
        lipcert.certify(net, x, y, method="naive", norm="inf", records=records, resume=True)
    with pytest.raises(ResumeError, match="data"):
        lipcert.certify(net, x + 1e-9, y, method="naive", records=records, resume=True)
    with pytest.raises(ResumeError, match="bounds"):
        lipcert.certify(net, x, y, method="combined", records=records, resume=True)


# ------------------------------------------------------------------------- real models and data
@pytest.mark.data
def test_trained_model_radii_are_sound_and_ordered(shared_data: Path) -> None:
    net = lipschitz_mlp(shared_data)
    data = mnist(shared_data, 400)
    cert = lipcert.certify(net, data.x, data.y, method="naive,eclipse-fast,combined")
    assert cert.clean_accuracy > 0.7 and cert.certified_accuracy(0.5)[0] > 0.3  # radii are not all ~0
    assert np.all(cert.radii["combined"] >= cert.radii["eclipse-fast"])
    assert np.all(cert.radii["combined"] >= cert.radii["naive"])
    for norm in ("2", "inf"):
        c = cert if norm == "2" else lipcert.certify(net, data.x, data.y, norm="inf", bound=cert.bounds["combined"])
        target = c.correct & (c.radius > 0)
        below = attack(net, data.x[target], data.y[target], norm=norm, eps=0.999 * c.radius[target], steps=30,
                       restarts=2)
        assert not below.success.any(), f"attack broke {below.success.sum()} certified L{norm} radii"
        # the same attack is not toothless: at a few times the radius it breaks inputs
        above = attack(net, data.x[target], data.y[target], norm=norm, eps=4 * c.radius[target], steps=30, restarts=1)
        assert above.success.mean() > 0.2


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("model", MNIST_MLPS)
def test_real_models_radii_are_sound(shared_data: Path, model: str) -> None:
    net = lipcert.load(shared_data / "models" / model)
    data = mnist(shared_data, 200)
    x = data.x.reshape(len(data.y), *net.input_shape)
    cert = lipcert.certify(net, x, data.y, method="naive,eclipse-fast,combined")
    assert cert.clean_accuracy > 0.9
    assert np.all(cert.radii["combined"] >= cert.radii["eclipse-fast"])
    assert np.all(cert.radii["combined"] >= cert.radii["naive"])
    target = cert.correct & (cert.radius > 0)
    below = attack(net, x[target], data.y[target], norm=2, eps=0.999 * cert.radius[target], steps=20, restarts=1)
    assert not below.success.any()
    grid = [float(np.median(cert.radius[target])), 0.5]
    acc = cert.certified_accuracy(grid)
    for e, a in zip(grid, acc):
        result = attack(net, x, data.y, norm=2, eps=e, steps=10, restarts=1)
        assert soundness_violations(cert, result).size == 0
        assert a <= result.robust_accuracy <= cert.clean_accuracy
    assert acc[0] > acc[1] == 0.0  # a normally trained MLP certifies nothing at L2 0.5 (honest, not a goal)


@pytest.mark.data
@pytest.mark.slow
def test_conv_model_with_normalization_radii_are_sound_in_pixel_space(shared_data: Path) -> None:
    from lipcert import datasets

    net = lipcert.load(shared_data / "models" / "oval21_cifar_base_kw" / "cifar_base_kw.onnx",
                       mean=(0.485, 0.456, 0.406), std=(0.225, 0.225, 0.225))
    data = datasets.load("cifar10", root=shared_data / "datasets", download=False)
    cert = lipcert.certify(net, data.x, data.y, method="eclipse-fast")
    assert cert.clean_accuracy == pytest.approx(0.73)  # the accuracy measured with onnxruntime
    target = cert.correct & (cert.radius > 0)
    for norm in ("2", "inf"):
        c = cert if norm == "2" else lipcert.certify(net, data.x, data.y, norm="inf", bound=cert.bounds["eclipse-fast"])
        below = attack(net, data.x[target], data.y[target], norm=norm, eps=0.999 * c.radius[target], steps=20,
                       restarts=2, input_range=(0.0, 1.0))
        assert not below.success.any()
        above = attack(net, data.x[target], data.y[target], norm=norm, eps=50 * c.radius[target], steps=20, restarts=1,
                       input_range=(0.0, 1.0))
        assert above.success.mean() > 0.2


# ------------------------------------------------------------------------- command line
@pytest.mark.data
def test_cli_certify_resume_and_errors(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lipcert.cli import main
    from lipcert.npz import save_npz

    model = tmp_path / "mlp.npz"
    save_npz(lipschitz_mlp(shared_data), model)
    out = tmp_path / "run"
    base = [str(model), "--dataset", "mnist", "--data-dir", str(shared_data / "datasets"), "--n", "250",
            "--batch-size", "100", "--out", str(out)]
    argv = ["certify", *base, "--method", "naive", "--method", "eclipse-fast,combined", "--eps", "0.25,0.5,1",
            "--attack", "--attack-steps", "10", "--attack-restarts", "1"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["naive", "eclipse-fast", "combined"] and report["n_inputs"] == 250
    assert sum(report["attack"]["violations"]) == 0
    samples = (out / "samples.csv").read_text()
    assert samples.startswith("index,label,prediction,margin,radius")
    # interrupt: keep 120 records and a torn line, and drop the attack of the last eps
    records = out / "records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:121]) + lines[121][:10])
    attacks = (out / "attack.jsonl").read_text().splitlines(keepends=True)
    (out / "attack.jsonl").write_text("".join(attacks[:2]))
    assert main(argv + ["--resume"]) == 0
    assert "resumed: 100 of 250" in capsys.readouterr().err
    assert (out / "samples.csv").read_text() == samples
    assert len((out / "attack.jsonl").read_text().splitlines()) == 3
    again = json.loads((out / "report.json").read_text())
    assert again["certified_accuracy"] == report["certified_accuracy"]
    assert again["attack"]["upper_bound"] == report["attack"]["upper_bound"]

    def fails(args: list[str], message: str) -> None:
        assert main(args) == 2
        assert message in capsys.readouterr().err

    fails(argv, "already holds a run")
    fails(["certify", *base, "--overwrite", "--eps", "-1"], "eps must be finite and >= 0")
    fails(["certify", str(model), "--dataset", "imagenet7", "--eps", "1", "--out", str(tmp_path / "x")], "imagenet7")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, 28, 28), np.float32), y=np.array([0, 1, 2, 12]))
    fails(["certify", str(model), "--dataset", str(bad), "--eps", "1", "--out", str(tmp_path / "y")], "out of range")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 28, 28), np.float32), y=np.array([0, 1, 2, 3]))
    fails(["certify", str(model), "--dataset", str(wrong), "--eps", "1", "--out", str(tmp_path / "z")], "shape")
    fails(["certify", *base, "--overwrite", "--norm", "l3"], "unsupported norm")
