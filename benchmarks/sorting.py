"""Bounds of random nets with MaxMin, GroupSort, FullSort and Householder activations (docs/decisions.md 19).

Run:  python benchmarks/sorting.py [--seeds 3] [--out benchmarks/results/sorting.md]

Gaussian MLPs (W ~ N(0, 1/fan_in), biases N(0, 1)) with each activation between the affine maps,
rewritten exactly into orthogonal maps around |.| layers.  Per net: the naive product, `combined`
(the exact step through every |.| layer), the pattern and Jacobian lower bounds, and the same
weights with ReLU for scale.  Every upper bound must stay above both lower bounds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import lipcert
from lipcert import sorting
from lipcert.bounds.lower import lower_bound

from run_info import machine

SHAPES = ((16, 32, 32, 10), (16, 64, 64, 64, 10))
KINDS = ("maxmin", "groupsort2", "groupsort4", "fullsort", "householder")


def stages(kind: str, n: int, gen: torch.Generator) -> list[sorting.Stage]:
    if kind == "maxmin":
        return sorting.maxmin_halves_stages(n)
    if kind == "householder":
        return sorting.householder_stages(2 * math.pi * torch.rand(n // 2, generator=gen, dtype=torch.float64))
    return sorting.groupsort_stages(n, {"groupsort2": 2, "groupsort4": 4, "fullsort": None}[kind])


def row(kind: str, widths: tuple[int, ...], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(b, a, generator=gen, dtype=torch.float64) / math.sqrt(a) for a, b in itertools.pairwise(widths)]
    bs = [torch.randn(b, generator=gen, dtype=torch.float64) for b in widths[1:]]
    net = sorting.chain(ws, bs, [stages(kind, n, gen) for n in widths[1:-1]])
    start = time.perf_counter()
    combined = lipcert.lipschitz(net, method="combined").value
    seconds = time.perf_counter() - start
    naive = lipcert.lipschitz(net, method="naive").value
    low = lower_bound(net, restarts=4, samples=128, seed=seed)
    relu = lipcert.Network.from_weights(ws, bs, "relu")
    return {"depth": net.depth, "naive": naive, "combined": combined, "seconds": seconds, "pattern": low.pattern,
            "jacobian": low.jacobian, "relu_combined": lipcert.lipschitz(relu, method="combined").value,
            "relu_naive": lipcert.lipschitz(relu, method="naive").value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sorting.md")
    args = parser.parse_args()
    start = time.perf_counter()
    lines = [("| activation | widths | seed | layers after rewrite | naive | combined | pattern LB | Jacobian LB | "
             "combined / naive | combined / LB | seconds | ReLU: combined / naive |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for kind, widths in itertools.product(KINDS, SHAPES):
        ratios = []
        for seed in range(args.seeds):
            r = row(kind, widths, seed)
            best_low = max(r["pattern"], r["jacobian"])
            assert r["combined"] >= best_low and r["naive"] >= best_low, (kind, widths, seed, r)
            ratios.append(r["combined"] / r["naive"])
            lines.append(f"| {kind} | {'-'.join(map(str, widths))} | {seed} | {r['depth']} | {r['naive']:.4g} | "
                         f"{r['combined']:.4g} | {r['pattern']:.4g} | {r['jacobian']:.4g} | "
                         f"{r['combined'] / r['naive']:.3f} | {r['combined'] / best_low:.3f} | {r['seconds']:.2f} | "
                         f"{r['relu_combined'] / r['relu_naive']:.3f} |")
            print(lines[-1], flush=True)
        summary.append(f"| {kind} | {'-'.join(map(str, widths))} | {statistics.mean(ratios):.3f} |")
    text = "\n".join([
        "# MaxMin, GroupSort, FullSort and Householder nets: closed-form bounds against naive and the lower bounds",
        "",
        f"Command: `{' '.join(['python benchmarks/sorting.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine()}; total {(time.perf_counter() - start) / 60:.1f} min.",
        "",
        ("Gaussian MLPs (W ~ N(0, 1/fan_in), biases N(0, 1)) with the activation after every hidden affine map, "
        "rewritten exactly (docs/decisions.md 19): GroupSort-k and FullSort add one layer per sorting stage. "
        "`combined` takes the exact step through every |.|/identity layer. No upper bound fell below a lower bound "
        "(the script asserts it)."),
        "",
        "## Mean combined / naive",
        "",
        "| activation | widths | mean combined / naive |",
        "|---|---|---:|",
        *summary,
        "",
        "## Every net",
        "",
        *lines,
        "",
    ])
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
