"""Lipschitz-trained residual models: library claims against lipcert's certified bounds (issue 17 part 5).

For every model (ONNX, with a model card beside it written by benchmarks/zoo/train_residual.py):

* the library's claim (1-Lipschitz by construction) and the radii its own rule gives
  (:data:`CLAIM_DENOMINATOR`), and for unit-norm last rows also the global rule margin / sqrt(2) misapplied;
  for the model trained with lipcert's differentiable block bound (``library`` "lipcert") its training-time
  pairwise constants from the card (min_j margin_j / L_yj), which are not a certificate;
* lipcert's certified bounds (naive, eclipse-fast, combined) with their times and the largest
  pairwise margin constant, and lipcert's rigorous lower bound on Lip (activation patterns, Jacobians);
* certified accuracy at the zoo's radii on the first ``--n`` Fashion-MNIST test images from each
  bound, from the library's claim, from CROWN (auto_LiRPA, the first ``--crown-n`` images) and from
  alpha-CROWN (the first ``--alpha-n`` images; about 50 s per image and radius here, so a radius is run only
  on the inputs alpha-CROWN verified at the radius below it, the others counted as not verified: with
  nested balls a larger radius verifying where a smaller one did not is not expected, and would only be
  missed, never invented);
* PGD (lipcert.attacks) at the claimed radii: a success is an input where the claim is broken.

Rows are written to ``--out``'s JSON after every model; rows of models not named by ``--models`` are
kept from it, so models can be rerun one at a time (each row records its command and the machine load);
``--models`` with no path rewrites the table from the stored rows.

Command (repository root)::

    python benchmarks/graphs.py --data-dir ../shared/data/datasets --out benchmarks/results/graphs.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert import datasets
from lipcert.adapters.lirpa import verify
from lipcert.graph import GraphNetwork, Residual
from lipcert.network import Network
from lipcert.radii import pairwise_constants

from run_info import machine

MODELS = ("benchmarks/zoo/models/fmnist-sll-maxmin.onnx", "benchmarks/zoo/models/fmnist-lipres-groupsort.onnx",
          "benchmarks/zoo/models/fmnist-resmaxmin-lipcert.onnx")
METHODS = ("naive", "eclipse-fast", "combined")
EPS = (0.5, 1.0, 1.58)
CLAIM_DENOMINATOR = {"orthogonium": 2.0, "torchlip": math.sqrt(2)}
"""The library's own radius rule, margin / denominator: orthogonium's VRA for a UnitNormLinear last layer
("classwise": each logit 1-Lipschitz, so Lip(f_y - f_j) <= 2); deel-torchlip's for a 1-Lipschitz vector map
(Lip(f_y - f_j) <= sqrt 2)."""


def claimed_constants(card: dict, k: int) -> np.ndarray:
    """K x K constants of the claim: the library's denominator, or the card's training-time pairwise bound."""
    if card["library"] == "lipcert":
        return np.asarray(card["training_bound"]["pairwise"], dtype=np.float64)
    return np.full((k, k), CLAIM_DENOMINATOR[card["library"]])


def verified_nested(path: Path, x: np.ndarray, y: np.ndarray, verifier: str) -> dict:
    """Verified fraction per radius of EPS (each radius run on the inputs verified at the one below) and time."""
    alive, fractions, seconds = np.arange(len(x)), [], 0.0
    for e in EPS:
        if len(alive):
            found = verify(path, x[alive], y[alive], eps=[e], verifier=verifier)
            alive, seconds = alive[found.verified[0]], seconds + found.seconds
        fractions.append(len(alive) / len(x))
    return {"n": len(x), "certified": fractions, "seconds": seconds}


def power_estimate(net: GraphNetwork, steps: int = 500, seed: int = 0) -> float:
    """What LiResNet / SLL / BRONet report: naive's stagewise composition (a chain the product of its layers'
    norms, a residual block ||S|| + that of its branch; activations 1-Lipschitz) with every norm from ``steps``
    power iterations.  Power iteration converges from below, so this is an estimate, not a bound."""
    gen = torch.Generator().manual_seed(seed)

    def norm(w: torch.Tensor) -> float:
        v = torch.randn(w.shape[1], generator=gen, dtype=w.dtype)
        for _ in range(steps):
            v = w.T @ (w @ v)
            v = v / v.norm()
        return float((w @ v).norm())

    def chain(c: Network) -> float:
        return math.prod(norm(w) for w in c.densified().weights)

    total = 1.0
    for stage in net.stages:
        if isinstance(stage, Residual):
            total *= (1.0 if stage.shortcut is None else norm(stage.shortcut_matrix())) + chain(stage.branch)
        else:
            total *= chain(stage)
    return total


def bench(path: Path, x: np.ndarray, y: np.ndarray, crown_n: int, alpha_n: int) -> dict:
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
    row["power"] = power_estimate(net)
    low = lipcert.lower_bound(net, restarts=4, samples=64)
    row["lower"] = low.value
    cert = lipcert.certify(net, x, y, bound=bounds)
    logits = np.asarray(net(x))
    top = np.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    others = np.where(np.arange(logits.shape[1])[None, :] == y[:, None], -np.inf, logits).max(axis=1)
    margin = np.where(logits.argmax(axis=1) == y, top - others, 0.0)
    pairs = claimed_constants(card, logits.shape[1])
    gaps = (top[:, None] - logits) / pairs[y]
    gaps[np.arange(len(y)), y] = np.inf
    claimed = np.where(logits.argmax(axis=1) == y, gaps.min(axis=1), 0.0)
    global_rule = margin / math.sqrt(2)  # a 1-Lipschitz vector map's rule, misapplied to unit-norm rows
    row["clean"] = float((logits.argmax(axis=1) == y).mean())
    row["certified"] = {m: [float(v) for v in cert.certified_accuracy(EPS, m)] for m in METHODS}
    row["certified"]["claim"] = [float((claimed >= e).mean()) for e in EPS]
    broken = lipcert.attack(net, x, y, norm=2, eps=claimed * (1 - 1e-6), steps=100, restarts=4)
    row["claim_broken"] = int((broken.success & (claimed > 0)).sum())
    if card["library"] == "orthogonium":
        misapplied = lipcert.attack(net, x, y, norm=2, eps=global_rule * (1 - 1e-6), steps=100, restarts=4)
        row["global_rule_broken"] = int((misapplied.success & (global_rule > 0)).sum())
    for key, verifier, n in (("crown", "crown", crown_n), ("alpha_crown", "alpha-crown", alpha_n)):
        try:
            row[key] = verified_nested(path, x[:n], y[:n], verifier)
        except Exception as exc:  # noqa: BLE001 - the table states why the verifier gave no number
            row[key] = {"n": n, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    if card["library"] == "lipcert":
        row["training_bound"] = card["training_bound"]["global"]
    row["certify_seconds"] = cert.seconds
    return row


def _verified(cell: dict) -> str:
    if "error" in cell:
        return f"failed ({cell['error']})"
    return " / ".join(f"{100 * v:.1f}" for v in cell["certified"]) + f" (n = {cell['n']}, {cell['seconds']:.0f} s)"


def _claim(r: dict) -> tuple[str, str]:
    """The claim's constant (table 1) and the name of its radius rule (table 2)."""
    if r["library"] == "lipcert":
        return f"{r['training_bound']:.4f} (training bound)", "training pairwise L_yj"
    return "1", f"d = {CLAIM_DENOMINATOR[r['library']]:.4g}"


def report(rows: list[dict], n: int) -> str:
    commands = sorted({f"`{r['command']}`" for r in rows})
    lines = ["# Lipschitz-trained residual models: library claims against lipcert (issue 17 part 5)", "",
             "Command(s): " + "; ".join(commands), ""]
    for r in rows:
        lines += [f"{r['model']}: {r['machine'][0]}", "", f"{r['model']}: {r['machine'][1]}", ""]
    lines += [f"First {n} Fashion-MNIST test images, L2 radii in [0, 1] pixel units; CROWN and alpha-CROWN on the "
              "first n of them (n in the cell), each radius on the inputs verified at the radius below.", "",
              "| model | library claim | power iteration (estimate) | lower bound | naive | eclipse-fast | combined "
              "| max pairwise (combined) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["bounds"]
        power = f"{r['power']:.4f}" if "power" in r else "-"
        lines.append(f"| {r['model']} ({r['library']}) | {_claim(r)[0]} | {power} | {r['lower']:.4f} | "
                     + " | ".join(f"{b[m]['value']:.4f} ({b[m]['seconds']:.1f} s)" for m in METHODS)
                     + f" | {b['combined']['pairwise_max']:.4f} |")
    lines += ["", "Certified accuracy (%) at " + " / ".join(str(e) for e in EPS) + ":", "",
              "| model | clean | library's rule (margin / d) | PGD breaks it | " + " | ".join(METHODS)
              + " | CROWN | alpha-CROWN |", "|---|---:|---|---:|" + "---|" * (len(METHODS) + 2)]
    for r in rows:
        c = r["certified"]
        cells = [" / ".join(f"{100 * v:.1f}" for v in c[m]) for m in ("claim", *METHODS)]
        lines.append(f"| {r['model']} | {100 * r['clean']:.1f} | {_claim(r)[1]}: {cells[0]} | {r['claim_broken']} | "
                     + " | ".join(cells[1:]) + f" | {_verified(r['crown'])} | {_verified(r['alpha_crown'])} |")
    lines += ["", "Power iteration: naive's stagewise composition with each layer's norm from 500 power-iteration "
              "steps (what LiResNet / SLL / BRONet certify with; from below, so not a bound); added to the stored rows by "
              "`python benchmarks/graphs.py --power-only --data-dir ../shared/data/datasets`."]
    lines += [""] + [f"{r['model']}: margin / sqrt(2), the rule of a 1-Lipschitz vector map, applied to its unit-norm "
                     f"last rows (whose pairwise distances reach {r['bounds']['combined']['pairwise_max']:.3f} > sqrt 2) "
                     f"is broken by PGD on {r['global_rule_broken']} of {n} inputs."
                     for r in rows if "global_rule_broken" in r]
    lines += [f"{r['model']}: its training-time bound {r['training_bound']:.4f} (float64, not inflated; "
              f"||W_head|| x prod of block values x ||W_0||) against lipcert's certified combined "
              f"{r['bounds']['combined']['value']:.4f} and the lower bound {r['lower']:.4f}."
              for r in rows if "training_bound" in r]
    lines += ["", "Structures as lipcert loaded them:", ""] + [f"- {r['model']}: `{r['structure']}`" for r in rows]
    return "\n".join(lines) + "\n"


def _stored(store: Path) -> dict[str, dict]:
    """Rows of an earlier run by model name (rows without alpha-CROWN, from before it was added, are dropped)."""
    rows = json.loads(store.read_text()) if store.exists() else []
    return {r["model"]: r for r in rows if "alpha_crown" in r}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--crown-n", type=int, default=50)
    p.add_argument("--alpha-n", type=int, default=10)
    p.add_argument("--models", nargs="*", type=Path, default=[Path(m) for m in MODELS])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/graphs.md"))
    p.add_argument("--power-only", action="store_true",
                   help="add the power-iteration estimate to the stored rows of --models, then render the table")
    args = p.parse_args()
    store = args.out.with_suffix(".json")
    if args.power_only:
        kept = _stored(store)
        for path in args.models:
            kept[path.stem]["power"] = power_estimate(lipcert.load(path))
        store.write_text(json.dumps(list(kept.values()), indent=1) + "\n")
        args.models = []
    x, y = datasets.load("fashion-mnist", "test", args.data_dir, limit=args.n)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)
    command = "python benchmarks/graphs.py " + shlex.join(sys.argv[1:])
    for path in args.models:
        before = machine("at the start")
        row = bench(path, x, y, args.crown_n, args.alpha_n)
        kept = _stored(store)  # read again: another run may have written its models meanwhile
        kept[row["model"]] = {**row, "command": command, "machine": [before, machine()]}
        store.write_text(json.dumps(list(kept.values()), indent=1) + "\n")
    kept = _stored(store)
    order = [Path(m).stem for m in MODELS]
    rows = sorted(kept.values(), key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    appended = args.out.read_text().partition("\n## ")[2] if args.out.exists() else ""  # other scripts' sections
    args.out.write_text(report(rows, len(x)) + (f"\n## {appended}" if appended else ""))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
