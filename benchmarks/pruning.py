"""What pruning the passes of `combined` costs in tightness and saves in time (docs/decisions.md item 11).

Run:  python benchmarks/pruning.py [--beams 1,2,3] [--out benchmarks/results/pruning.md]

For each net: combined without pruning (every pass to the end: the reference value), the default
(factor 1.2), and the default with at most ``beam`` trajectories besides SN(1)'s; each value is
divided by the reference (>= 1; 1 = nothing lost) and each time by ECLipsE-Fast's in the same run.
Nets: Gaussian MLPs (math.md Table A, widths 300-1000), non-negative ECLipsE-style nets, the shared
ReLU MLPs and CNNs (dense matrices of the convolutions), and the Lipschitz-trained zoo models.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert.bounds import closed_form
from lipcert.bounds.rules import Rule
from lipcert.random_nets import gaussian

from run_info import REPO, SHARED_DATA, machine
from speed import CNN_MODELS


def nonnegative(width: int, depth: int, seed: int) -> lipcert.Network:
    """Uniform[0, 1) weights rescaled to spectral norm 1 (the ECLipsE benchmark's kind of net, wider)."""
    rng = np.random.default_rng(seed)
    dims = [width] * depth + [1]
    weights = []
    for i, o in zip(dims[:-1], dims[1:]):
        w = rng.uniform(size=(o, i))
        weights.append(w / np.linalg.norm(w, 2))
    return lipcert.Network.from_weights(weights)


def nets(data: Path) -> list[tuple[str, Callable[[], lipcert.Network]]]:
    out: list[tuple[str, Callable[[], lipcert.Network]]] = []
    for width in (300, 600, 1000):
        for depth in (5, 10, 30):
            for seed in (0, 1):
                out.append((f"gaussian {width}x{depth} s{seed}", lambda w=width, d=depth, s=seed: gaussian([w] * d + [1], seed=s)))
    for width, depth in ((300, 10), (600, 20)):
        out.append((f"non-negative {width}x{depth}", lambda w=width, d=depth: nonnegative(w, d, 0)))
    for k in (2, 4, 6):
        path = data / "models" / "mnistfc" / f"mnist-net_256x{k}.onnx"
        out.append((f"mnist-net_256x{k}", lambda p=path: lipcert.load(p, check=False)))
    for name, rel, _, mean, std in CNN_MODELS:
        out.append((name, lambda p=data / rel, m=mean, s=std: lipcert.load(p, mean=m, std=s, check=False)))
    for path in sorted((REPO / "benchmarks" / "zoo" / "models").glob("*.onnx")):
        out.append((f"zoo {path.stem}", lambda p=path: lipcert.load(p, check=False)))
    return out


def timed(fn: Callable[[], dict]) -> tuple[float, float]:
    start = time.perf_counter()
    res = fn()
    return min(r.value for r in res.values()), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--beams", default="1,2,3")
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--only", default="", help="comma-separated substrings of net names to run")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pruning.md")
    args = p.parse_args(argv)
    beams = [int(b) for b in args.beams.split(",")]
    header = ["net", "widths", "reference", "default"] + [f"beam {b}" for b in beams]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    worst = {k: 1.0 for k in header[3:]}
    times: dict[str, list[float]] = {k: [] for k in header[2:]}
    for name, build in nets(args.data):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        net = build()
        weights = [w.double() for w in net.weights]
        slopes = [(a.double(), b.double()) for a, b in net.slopes()]
        fast = min(timed(lambda: {"sn(1)": closed_form.single_rule(weights, slopes, Rule("sn", 1.0))})[1]
                   for _ in range(2))
        ref, t_ref = timed(lambda: closed_form.combined(weights, slopes, prune=None))
        cells = [f"1 ({t_ref / fast:.2f}x)"]
        times["reference"].append(t_ref / fast)
        runs = [("default", closed_form.PRUNE_FACTOR, None)] + [(f"beam {b}", closed_form.PRUNE_FACTOR, b) for b in beams]
        for label, factor, beam in runs:
            value, t = timed(lambda f=factor, b=beam: closed_form.combined(weights, slopes, prune=f, beam=b))
            worst[label] = max(worst[label], value / ref)
            times[label].append(t / fast)
            cells.append(f"{value / ref:.4f} ({t / fast:.2f}x)")
        widths = "-".join(str(w) for w in net.widths)
        rows.append(f"| {name} | {widths} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    summary = ["| | " + " | ".join(header[2:]) + " |", "|---" * (len(header) - 1) + "|",
               "| worst value / reference | 1 | " + " | ".join(f"{worst[k]:.4f}" for k in header[3:]) + " |",
               "| median time / Fast | " + " | ".join(f"{np.median(times[k]):.2f}x" for k in header[2:]) + " |",
               "| largest time / Fast | " + " | ".join(f"{max(times[k]):.2f}x" for k in header[2:]) + " |"]
    text = "\n".join([
        "# Pruning the passes of `combined`: tightness lost and time saved", "",
        f"Command: `python benchmarks/pruning.py --beams {args.beams}`  ",
        f"Machine: {machine()}.", "",
        "Each cell: combined's value divided by the value without pruning (1 = nothing lost), then its time "
        "as a multiple of ECLipsE-Fast's in the same run.  `default` prunes passes whose truncated bound is "
        "> 1.2x the best (docs/decisions.md item 11); `beam b` also keeps at most b trajectories besides SN(1)'s.",
        "Here every net is pruned; by default combined prunes only nets with a hidden layer >= 256 wide.", "",
        *summary, "", *rows, ""])
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
