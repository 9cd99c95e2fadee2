"""`lipcert bound` on .npz networks: table, JSON keys and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lipcert
from lipcert.cli import main
from lipcert.npz import load_npz, save_npz


@pytest.fixture
def npz_net(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "net.npz"
    np.savez(path, W1=rng.normal(size=(12, 5)), W2=rng.normal(size=(12, 12)), W3=rng.normal(size=(4, 12)),
             b1=rng.normal(size=12), activation=np.array("tanh"))
    return path


def test_json_output(npz_net: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bound", str(npz_net), "--method", "naive,eclipse-fast", "--method", "combined", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"bounds", "lower_bound", "seconds"}
    assert list(out["bounds"]) == ["naive", "eclipse-fast", "combined"]
    net = load_npz(npz_net)
    assert out["bounds"]["combined"] == pytest.approx(lipcert.lipschitz(net).value, rel=1e-12)
    assert out["lower_bound"] <= out["bounds"]["combined"] <= out["bounds"]["eclipse-fast"] <= out["bounds"]["naive"]
    assert all(s >= 0 for s in out["seconds"].values())


def test_table_output_via_module_entry_point(npz_net: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "lipcert", "bound", str(npz_net)], capture_output=True, text=True,
                         check=True)
    lines = run.stdout.splitlines()
    assert any(line.startswith("combined") for line in lines)
    assert any(line.startswith("lower bound") for line in lines)
    header = next(line for line in lines if line.startswith("method"))
    assert "/naive" in header and "/lower" in header and "seconds" in header


def test_errors_are_one_line(tmp_path: Path, npz_net: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bound", str(tmp_path / "missing.npz")]) == 2
    assert "no such model file" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["bound", str(bad)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    np.savez(tmp_path / "gap.npz", W1=np.ones((3, 2)), W3=np.ones((1, 3)))
    assert main(["bound", str(tmp_path / "gap.npz")]) == 2
    assert "W2 are missing" in capsys.readouterr().err
    assert main(["bound", str(npz_net), "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    # method names are checked before the model is read
    assert main(["bound", str(tmp_path / "missing.npz"), "--method", "naive,gc(2.5)"]) == 2
    assert "0 < c < 2" in capsys.readouterr().err


def test_npz_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    net = lipcert.Network.from_weights([rng.normal(size=(6, 4)), rng.normal(size=(3, 6))],
                                       [rng.normal(size=6), rng.normal(size=3)], "sigmoid", input_shape=(2, 2))
    save_npz(net, tmp_path / "n.npz")
    back = load_npz(tmp_path / "n.npz")
    x = rng.normal(size=(5, 2, 2))
    np.testing.assert_allclose(back(x), net(x), rtol=1e-14)
    assert back.activation_names == ("sigmoid",) and back.input_shape == (2, 2)
