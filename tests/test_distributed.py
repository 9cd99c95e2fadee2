"""Certification on a real Dask LocalCluster of two worker processes: the serial run's bits, worker and
driver deaths, an unreachable scheduler.  One cluster for the module (starting one costs seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lipcert
from lipcert import distributed as dist
from lipcert.cli import main
from lipcert.errors import ClusterError
from lipcert.npz import save_npz
from lipcert.random_nets import gaussian

pytest.importorskip("distributed")

METHODS = ["naive", "eclipse-fast", "combined"]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = dist.connect(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def _problem(seed: int, n: int, width: int = 48) -> tuple[lipcert.Network, np.ndarray, np.ndarray]:
    """A Gaussian ReLU net (20 -> width -> width -> 6) and n inputs labelled with its own predictions
    (so every input gets a local radius)."""
    rng = np.random.default_rng(seed)
    net = gaussian([20, width, width, 6], seed=rng, biases=True)
    x = rng.normal(size=(n, 20))
    with torch.no_grad():
        y = net.forward(torch.as_tensor(x)).argmax(dim=1).numpy()
    return net, x, y


def _same(a: lipcert.Certification, b: lipcert.Certification) -> None:
    assert a.methods == b.methods
    for name in ("index", "label", "prediction", "margin", "logit_error"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for m in a.methods:
        assert np.array_equal(a.radii[m], b.radii[m]), m  # bit for bit, not up to a tolerance


def test_cluster_run_is_the_serial_run_bit_for_bit(client: Any, seed: int, tmp_path: Path) -> None:
    net, x, y = _problem(seed, 16)
    serial = lipcert.certify(net, x, y, method=METHODS, local=True, batch_size=7, records=tmp_path / "serial.jsonl")
    spread = lipcert.certify(net, x, y, method=METHODS, local=True, batch_size=7, records=tmp_path / "dask.jsonl",
                             client=client)
    _same(serial, spread)
    assert spread.workers == 2 and serial.workers == 0
    assert (serial.radii["local"] > serial.radii["combined"]).any()  # the local shards did work
    # the one writer wrote the same records, batch by batch in order
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "serial.jsonl").read_bytes()
    # the L-infinity radii and the global-only path (one forward task per batch) too
    _same(lipcert.certify(net, x, y, norm="inf", batch_size=4),
          lipcert.certify(net, x, y, norm="inf", batch_size=4, client=client))


def test_a_worker_killed_mid_run_loses_nothing(client: Any, seed: int) -> None:
    net, x, y = _problem(seed, 24, width=48)
    serial = lipcert.certify(net, x, y, local=True, batch_size=10)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy = [w for w, tasks in client.processing().items() if any("local" in str(t) for t in tasks)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    spread = lipcert.certify(net, x, y, local=True, batch_size=10, client=client)
    killer.join()
    assert killed, "no worker was running a local-radius task to kill"
    _same(serial, spread)


def test_a_killed_driver_resumes_from_its_records(client: Any, seed: int, tmp_path: Path) -> None:
    net, x, y = _problem(seed, 20, width=40)
    save_npz(net, tmp_path / "net.npz")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lipcert", "certify", str(tmp_path / "net.npz"), "--dataset",
           str(tmp_path / "data.npz"), "--eps", "0.1", "--local", "--batch-size", "5", "--out", str(out),
           "--no-plots", "--scheduler", client.scheduler.address]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) > 5:  # header + a batch or more
            break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = len(records.read_text().splitlines()) - 1
    assert 5 <= written < len(y) and not (out / "report.json").exists(), f"not killed mid-run ({written} written)"
    args = ["certify", str(tmp_path / "net.npz"), "--dataset", str(tmp_path / "data.npz"), "--eps", "0.1", "--local",
            "--batch-size", "5", "--no-plots"]
    assert main([*args, "--out", str(out), "--resume", "--scheduler", client.scheduler.address]) == 0
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    assert (out / "samples.csv").read_bytes() == (tmp_path / "serial" / "samples.csv").read_bytes()
    assert (out / "records.jsonl").read_bytes() == (tmp_path / "serial" / "records.jsonl").read_bytes()


def test_an_unreachable_scheduler_is_one_named_line_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", 1.0)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        dist.connect(scheduler="tcp://127.0.0.1:1")
    out = tmp_path / "run"
    assert main(["certify", str(tmp_path / "missing.onnx"), "--dataset", "mnist", "--out", str(out),
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler" in err[0], err
    assert not out.exists()  # connected first: no model loaded (it does not even exist), nothing written


def test_several_checkpoints_in_one_command(client: Any, seed: int, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One run folder per model and a comparison; bounds computed on the cluster equal the serial ones."""
    import json

    x = y = None
    for k, width in enumerate((24, 32)):
        net, x, y = _problem(seed + k, 12, width=width)
        save_npz(net, tmp_path / f"ckpt{k}.npz")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    args = ["certify", str(tmp_path / "ckpt0.npz"), str(tmp_path / "ckpt1.npz"), "--dataset",
            str(tmp_path / "data.npz"), "--eps", "0.1", "--method", "naive,combined", "--no-plots"]
    assert main([*args, "--out", str(tmp_path / "sweep"), "--scheduler", client.scheduler.address]) == 0
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    for name in ("ckpt0", "ckpt1"):
        spread, serial = (json.loads((tmp_path / d / name / "report.json").read_text()) for d in ("sweep", "serial"))
        assert spread["lipschitz"] == {m: {**b, "seconds": spread["lipschitz"][m]["seconds"]}
                                       for m, b in serial["lipschitz"].items()}
        assert ((tmp_path / "sweep" / name / "samples.csv").read_bytes()
                == (tmp_path / "serial" / name / "samples.csv").read_bytes())
    rows = json.loads((tmp_path / "sweep" / "comparison.json").read_text())["tables"][0]["rows"]
    assert {(r["run"], r["method"]) for r in rows} == {(n, m) for n in ("ckpt0", "ckpt1") for m in ("naive", "combined")}
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "sweep")]) == 2  # its runs need --resume or --overwrite
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "sweep"), "--resume"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(tmp_path / "mine")]) == 2
    assert "holds files that lipcert did not write" in capsys.readouterr().err
