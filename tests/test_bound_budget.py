"""lipcert bound finishes on big models: memory estimated before allocating, a time budget for the lower bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert
from lipcert.bounds.lower import lower_bound
from lipcert.bounds.methods import resolve
from lipcert.bounds.workspace import lower_bytes, method_bytes
from lipcert.cli import main
from lipcert.errors import MemoryBudgetError
from lipcert.memory import PeakMemory
from lipcert.npz import save_npz


def _net(widths: list[int], seed: int) -> lipcert.Network:
    gen = torch.Generator().manual_seed(seed)
    return lipcert.Network.from_weights([torch.randn(o, i, generator=gen, dtype=torch.float64) / i**0.5
                                         for i, o in zip(widths[:-1], widths[1:])])


def test_wide_layer_is_refused_before_allocating(tmp_path: Path, seed: int,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A 60100-wide hidden layer (the VNN-COMP net whose 28.9 GB matrix crashed lipcert bound)."""
    net = _net([8, 60100, 10], seed)
    with pytest.raises(MemoryBudgetError, match=r"combined .* needs about 1\.\d+e\+03 GB.*--max-dense-gb"):
        lipcert.lipschitz(net, method="combined", max_bytes=8e9)
    path = tmp_path / "wide.npz"
    save_npz(net, path)
    assert main(["bound", str(path), "--method", "naive,combined", "--json", "--max-dense-gb", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bounds"]["naive"] > 0 and out["bounds"]["combined"] is None
    assert "--max-dense-gb" in out["notes"]["combined"] and "--max-dense-gb" in out["notes"]["lower bound"]
    assert out["seconds"]["naive"] > 0 and out["peak_memory_bytes"]["naive"] >= 0
    assert main(["bound", str(path), "--method", "naive,combined", "--max-dense-gb", "1"]) == 0
    text = capsys.readouterr().out
    assert "combined" in text and "n/a" in text and "note: lower bound:" in text


@pytest.mark.parametrize("method", ["naive", "eclipse-fast", "combined", "greedy"])
def test_estimate_exceeds_the_measured_peak(seed: int, method: str) -> None:
    net = _net([200, 1200, 1200, 10], seed)
    estimate = method_bytes(net, method, resolve(method).options)
    lipcert.lipschitz(net, method=method)  # libraries and workspaces loaded on first use are not the method's
    with PeakMemory() as memory:
        lipcert.lipschitz(net, method=method)
    assert 0 <= memory.peak_bytes <= estimate, (memory.peak_bytes, estimate)
    with PeakMemory() as memory:
        lower_bound(net, restarts=1, samples=64)
    assert memory.peak_bytes <= lower_bytes(net)


def test_lower_bound_time_budget(seed: int) -> None:
    net = _net([300, 400, 400, 400, 10], seed)
    quick = lower_bound(net, seconds=0.01)
    assert quick.status.startswith("stopped at its time budget of 0.01 s")
    upper = lipcert.lipschitz(net, method="combined").value
    assert 0 < quick.value <= upper
    assert lower_bound(net, restarts=1, samples=16).status == "ok"


def test_bound_json_reports_seconds_and_memory(tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net.npz"
    save_npz(_net([20, 30, 30, 5], seed), path)
    assert main(["bound", str(path), "--json", "--lower-seconds", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    methods = ["naive", "eclipse-fast", "combined"]
    assert set(out["seconds"]) == set(methods) | {"lower bound"}
    assert set(out["peak_memory_bytes"]) == set(methods) | {"lower bound"}
    assert all(isinstance(v, int) and v >= 0 for v in out["peak_memory_bytes"].values())
    assert all(out["bounds"][m] >= out["lower_bound"] * (1 - 1e-9) for m in methods)
    assert np.isfinite(out["lower_bound"])
