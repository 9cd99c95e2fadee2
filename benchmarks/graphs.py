"""Lipschitz-trained residual models: library claims against lipcert's certified bounds (issue 17 part 5).

For every model (ONNX, with a model card beside it written by benchmarks/zoo/train_residual.py):

* the library's claim (1-Lipschitz by construction) and the radii its own rule gives
  (:data:`CLAIM_DENOMINATOR`), and for unit-norm last rows also the global rule margin / sqrt(2) misapplied;
* lipcert's certified bounds (naive, eclipse-fast, combined) with their times and the largest
  pairwise margin constant, and lipcert's rigorous lower bound on Lip (activation patterns, Jacobians);
* certified accuracy at the zoo's radii on the first ``--n`` Fashion-MNIST test images from each
  bound, from the library's claim, and from CROWN (auto_LiRPA, the first ``--crown-n`` images);
* PGD (lipcert.attacks) at the claimed radii: a success is an input where the claim is broken.

Command (repository root)::

    python benchmarks/graphs.py --data-dir ../shared/data/datasets --out benchmarks/results/graphs.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

import lipcert
from lipcert import datasets
from lipcert.adapters.lirpa import verify
from lipcert.radii import pairwise_constants

from run_info import machine

MODELS = ("benchmarks/zoo/models/fmnist-sll-maxmin.onnx", "benchmarks/zoo/models/fmnist-lipres-groupsort.onnx")
METHODS = ("naive", "eclipse-fast", "combined")
EPS = (0.5, 1.0, 1.58)
CLAIM_DENOMINATOR = {"orthogonium": 2.0, "torchlip": math.sqrt(2)}
"""The library's own radius rule, margin / denominator: orthogonium's VRA for a UnitNormLinear last layer
("classwise": each logit 1-Lipschitz, so Lip(f_y - f_j) <= 2); deel-torchlip's for a 1-Lipschitz vector map
(Lip(f_y - f_j) <= sqrt 2)."""


def bench(path: Path, x: np.ndarray, y: np.ndarray, crown_n: int) -> dict:
    card = json.loads(path.with_suffix(".json").read_text())
    start = time.perf_counter()
    net = lipcert.load(path)
    row: dict = {"model": path.stem, "library": card["library"], "claim": card["library_claim"],
                 "structure": repr(net), "load_seconds": time.perf_counter() - start, "bounds": {}}
    bounds = {}
    for method in METHODS:
        bounds[method] = bound = lipcert.lipschitz(net, method)
        row["bounds"][method] = {"value": bound.value, "seconds": bound.seconds,
                                 "pairwise_max": float(pairwise_constants(bound, net).max())}
    low = lipcert.lower_bound(net, restarts=4, samples=64)
    row["lower"] = low.value
    cert = lipcert.certify(net, x, y, bound=bounds)
    logits = np.asarray(net(x))
    top = np.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    others = np.where(np.arange(logits.shape[1])[None, :] == y[:, None], -np.inf, logits).max(axis=1)
    margin = np.where(logits.argmax(axis=1) == y, top - others, 0.0)
    claimed = margin / CLAIM_DENOMINATOR[card["library"]]
    global_rule = margin / math.sqrt(2)  # a 1-Lipschitz vector map's rule, misapplied to unit-norm rows
    row["clean"] = float((logits.argmax(axis=1) == y).mean())
    row["certified"] = {m: [float(v) for v in cert.certified_accuracy(EPS, m)] for m in METHODS}
    row["certified"]["claim"] = [float((claimed >= e).mean()) for e in EPS]
    broken = lipcert.attack(net, x, y, norm=2, eps=claimed * (1 - 1e-6), steps=100, restarts=4)
    row["claim_broken"] = int((broken.success & (claimed > 0)).sum())
    if CLAIM_DENOMINATOR[card["library"]] != math.sqrt(2):
        misapplied = lipcert.attack(net, x, y, norm=2, eps=global_rule * (1 - 1e-6), steps=100, restarts=4)
        row["global_rule_broken"] = int((misapplied.success & (global_rule > 0)).sum())
    try:
        crown = verify(path, x[:crown_n], y[:crown_n], eps=list(EPS), verifier="crown")
    except Exception as exc:  # noqa: BLE001 - the table states why the verifier gave no number
        row["crown"] = {"n": crown_n, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    else:
        row["crown"] = {"n": crown_n, "certified": [float(crown.verified[i].mean()) for i in range(len(EPS))],
                        "seconds": crown.seconds}
    row["certify_seconds"] = cert.seconds
    return row


def report(rows: list[dict], n: int, info: str, command: str) -> str:
    lines = ["# Lipschitz-trained residual models: library claims against lipcert (issue 17 part 5)", "",
             f"Command: `{command}`", "", info, "",
             f"First {n} Fashion-MNIST test images, L2 radii in [0, 1] pixel units; CROWN on the first "
             f"{rows[0]['crown']['n']} of them.", "",
             "| model | library claim | lower bound | naive | eclipse-fast | combined | max pairwise (combined) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["bounds"]
        lines.append(f"| {r['model']} ({r['library']}) | 1 | {r['lower']:.4f} | "
                     + " | ".join(f"{b[m]['value']:.4f} ({b[m]['seconds']:.1f} s)" for m in METHODS)
                     + f" | {b['combined']['pairwise_max']:.4f} |")
    lines += ["", "Certified accuracy at " + " / ".join(str(e) for e in EPS) + ":", "",
              "| model | clean | library's rule (margin / d) | PGD breaks it | " + " | ".join(METHODS)
              + " | CROWN |", "|---|---:|---|---:|" + "---|" * (len(METHODS) + 1)]
    for r in rows:
        c = r["certified"]
        cells = [" / ".join(f"{100 * v:.1f}" for v in c[m]) for m in ("claim", *METHODS)]
        crown = (f"failed ({r['crown']['error']})" if "error" in r["crown"] else
                 " / ".join(f"{100 * v:.1f}" for v in r["crown"]["certified"]) + f" ({r['crown']['seconds']:.0f} s)")
        rule = f"d = {CLAIM_DENOMINATOR[r['library']]:.4g}: {cells[0]}"
        lines.append(f"| {r['model']} | {100 * r['clean']:.1f} | {rule} | {r['claim_broken']} | "
                     + " | ".join(cells[1:]) + f" | {crown} |")
    lines += [""] + [f"{r['model']}: margin / sqrt(2), the rule of a 1-Lipschitz vector map, applied to its unit-norm "
                     f"last rows (whose pairwise distances reach {r['bounds']['combined']['pairwise_max']:.3f} > sqrt 2) "
                     f"is broken by PGD on {r['global_rule_broken']} of {n} inputs."
                     for r in rows if "global_rule_broken" in r]
    lines += ["", "Structures as lipcert loaded them:", ""] + [f"- {r['model']}: `{r['structure']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--crown-n", type=int, default=50)
    p.add_argument("--models", nargs="*", type=Path, default=[Path(m) for m in MODELS])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/graphs.md"))
    args = p.parse_args()
    x, y = datasets.load("fashion-mnist", "test", args.data_dir, limit=args.n)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    before = machine("at the start")
    rows = [bench(m, x, y, args.crown_n) for m in args.models]
    command = "python benchmarks/graphs.py" + (f" --data-dir {args.data_dir}" if args.data_dir else "")
    info = f"{before}\n\n{machine()}"
    args.out.write_text(report(rows, len(x), info, command))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
