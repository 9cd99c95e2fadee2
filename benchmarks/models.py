"""Lipschitz bounds of every third-party model in ../shared/data, with load and bound times.

Run:  python benchmarks/models.py [--data ../shared/data] [--out benchmarks/results/models.md]

For each model file (the ONNX files, and the .pth checkpoints loaded into the architecture the
data README states): the time to load it with ``lipcert.load`` (conversion to dense matrices
and the conversion check against onnxruntime / the torch module), the naive, ECLipsE-Fast and
combined upper bounds on the L2 Lipschitz constant with their wall times, the certified lower
bound (``lipcert.lower_bound``: slope-pattern bound and sampled Jacobian norm), and the ratios.
Every network takes raw [0, 1] pixels: the stated normalization (x - mean) / std is prepended.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import lipcert
from lipcert.reference_models import CHECKPOINTS, load_checkpoint

from run_info import REPO, SHARED_DATA, machine

METHODS = ("naive", "eclipse-fast", "combined")


def load(data: Path, entry: dict[str, Any]) -> lipcert.Network:
    path = data / entry["file"]
    if path.suffix == ".pth":  # bare state_dicts: architecture from lipcert.reference_models
        module = load_checkpoint(path)
        shape = CHECKPOINTS[path.name].input_shape
        return lipcert.load(module, input_shape=shape, mean=entry["mean"], std=entry["std"])
    return lipcert.load(path, mean=entry["mean"], std=entry["std"])


def measure(data: Path, entry: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    net = load(data, entry)
    row: dict[str, Any] = {"file": entry["file"], "widths": list(net.widths), "load_s": time.perf_counter() - start,
                           "activations": sorted(set(net.activation_names)),
                           "conversion_error": net.info["conversion_error"]}
    for method in METHODS:
        bound = lipcert.lipschitz(net, method)
        row[method], row[f"{method}_s"] = bound.value, bound.seconds
    lower = lipcert.lower_bound(net)
    row.update(lower=lower.value, pattern=lower.pattern, jacobian=lower.jacobian, lower_s=lower.seconds)
    return row


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Lipschitz bounds of the third-party models",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Times are wall seconds.",
        "",
        "Upper bounds on the L2 Lipschitz constant (logits w.r.t. raw [0, 1] pixels, normalization prepended) and the "
        "certified lower bound max(pattern, Jacobian); `/lower` = bound / lower bound (1 would be exact).",
        "",
        "| model | widths | load s | naive | ECLipsE-Fast | combined | lower | naive/lower | fast/lower | "
        "combined/lower | combined/fast | bound s (naive, fast, combined) | lower s | conversion error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo = r["lower"]
        lines.append(
            f"| `{r['file']}` | {'-'.join(map(str, r['widths']))} | {r['load_s']:.1f} | {r['naive']:.4g} | "
            f"{r['eclipse-fast']:.4g} | {r['combined']:.4g} | {lo:.4g} | {r['naive'] / lo:.1f} | "
            f"{r['eclipse-fast'] / lo:.2f} | {r['combined'] / lo:.2f} | {r['combined'] / r['eclipse-fast']:.3f} | "
            f"{r['naive_s']:.1f}, {r['eclipse-fast_s']:.1f}, {r['combined_s']:.1f} | {r['lower_s']:.1f} | "
            f"{r['conversion_error']:.1e} |")
    lines += ["", "Lower bound parts (pattern bound over slope patterns, sampled Jacobian norm):", ""]
    lines += [f"- `{r['file']}`: pattern {r['pattern']:.4g}, Jacobian {r['jacobian']:.4g}; activations "
              f"{', '.join(r['activations'])}" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "models.md")
    args = parser.parse_args(argv)
    entries = [e for e in json.loads((args.data / "manifest.json").read_text()) if e["kind"] == "model"]
    rows = []
    for entry in entries:
        print(f"{entry['file']} ...", flush=True)
        rows.append(measure(args.data, entry))
        print(json.dumps(rows[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(rows, "python " + " ".join(shlex.quote(a) for a in sys.argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
