"""Which public models in ../shared/data load as published, and how each `lipcert bound` run went.

For every model file of the shared data's manifest (the files the tests use): ``lipcert.load(file)``
as a user would first try it (with the manifest's mean/std), the reason when it is refused; for a
state_dict checkpoint, the load with its class (``--model lipcert.reference_models:... --weights``);
then ``lipcert bound --json`` (default methods, lower bound with its default time budget) with its
seconds and peak memory per method.  Writes benchmarks/results/coverage.md.

    python benchmarks/coverage.py [--data ../shared/data] [--out benchmarks/results/coverage.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from run_info import SHARED_DATA, machine

import lipcert
from lipcert.cli import main as cli
from lipcert.reference_models import CHECKPOINTS

CLASSES = {"mnist_6_100_nat.pth": "eran_mnist_6_100", "mnist_a_adv.pth": "mnist_cnn_a",
           "cifar_conv_small_pgd.pth": "cifar_conv_small"}
"""The class (function of lipcert.reference_models) of each state_dict checkpoint."""


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def row(data: Path, entry: dict[str, Any]) -> dict[str, Any]:
    path = data / entry["file"]
    out: dict[str, Any] = {"file": entry["file"], "format": entry["format"]}
    mean, std = entry["mean"], entry["std"]
    try:
        net = lipcert.load(path, mean=mean, std=std)
        out["as_published"] = f"loaded ({'-'.join(map(str, net.widths))})"
    except lipcert.LipcertError as exc:
        out["as_published"] = f"refused: {_first_line(exc).replace(str(path), path.name).rstrip(':')}"
    argv = [str(path)]
    if path.name in CLASSES:
        shape = CHECKPOINTS[path.name].input_shape
        argv = ["--model", f"lipcert.reference_models:{CLASSES[path.name]}", "--weights", str(path),
                "--input-shape", ",".join(map(str, shape))]
        net = lipcert.load(f"lipcert.reference_models:{CLASSES[path.name]}", weights=path, input_shape=shape,
                           mean=mean, std=std)
        out["with_class"] = f"loaded ({'-'.join(map(str, net.widths))})"
    argv += ["--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std))]
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = cli(["bound", *argv, "--json"])
    out["bound_seconds"] = time.perf_counter() - start
    out["bound"] = json.loads(buffer.getvalue()) if code == 0 else None
    return out


def markdown(rows: list[dict[str, Any]], command: str, before: str) -> str:
    lines = ["# Coverage: the public models the tests use", "",
             f"Command: `{command}`  ", f"Machine: {before}  ", f"Machine: {machine()}", "",
             "Each file of ../shared/data/manifest.json, loaded as published (`lipcert.load(file)` with the "
             "manifest's mean/std) and, for a state_dict checkpoint, with its class (`--model "
             "lipcert.reference_models:... --weights FILE`); then `lipcert bound --json` with the default methods "
             "and the lower bound's default time budget: seconds and peak memory (growth of resident memory, "
             "sampled) per method.", "",
             "| model | format | as published | with its class | naive | eclipse-fast | combined | lower | "
             "seconds (naive, fast, combined, lower) | peak MB (naive, fast, combined, lower) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bound"] or {}
        methods = ["naive", "eclipse-fast", "combined", "lower bound"]
        values = [b.get("bounds", {}).get(m) for m in methods[:3]] + [b.get("lower_bound")]
        secs = [b.get("seconds", {}).get(m) for m in methods]
        peak = [b.get("peak_memory_bytes", {}).get(m) for m in methods]
        lines.append(f"| `{r['file']}` | {r['format']} | {r['as_published']} | {r.get('with_class', '-')} | "
                     + " | ".join("n/a" if v is None else f"{v:.4g}" for v in values) + " | "
                     + ", ".join("n/a" if v is None else f"{v:.1f}" for v in secs) + " | "
                     + ", ".join("n/a" if v is None else f"{v / 1e6:.0f}" for v in peak) + " |")
    notes = [f"- `{r['file']}`: {m}: {n}" for r in rows for m, n in ((r["bound"] or {}).get("notes") or {}).items()]
    if notes:
        lines += ["", "Notes from `lipcert bound`:", "", *notes]
    lines += ["", "No VNN-COMP max-pooling CNN is among the shared models; max pooling is tested on nets built in "
              "tests/test_maxpool.py (torch and ONNX) against the forward pass, onnxruntime and Jacobian lower "
              "bounds.", ""]
    return "\n".join(lines)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coverage.md")
    args = parser.parse_args()
    before = machine("at the start")
    entries = [e for e in json.loads((args.data / "manifest.json").read_text()) if e["kind"] == "model"]
    rows = []
    for entry in entries:
        rows.append(row(args.data, entry))
        print(f"{entry['file']}: {rows[-1]['as_published']}; bound {rows[-1]['bound_seconds']:.1f} s", file=sys.stderr)
    command = "python benchmarks/coverage.py" + "".join(f" {a}" for a in sys.argv[1:])
    args.out.write_text(markdown(rows, command, before))


if __name__ == "__main__":
    run()
