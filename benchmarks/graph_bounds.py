"""Bounds of random residual networks (GraphNetwork, docs/decisions.md 28-29) against their lower bounds.

Run:  python benchmarks/graph_bounds.py [--seeds 2] [--out benchmarks/results/graph_bounds.md]

Per seed and activation: a stem Linear(16 -> 32), three identity blocks x + W2 phi(W1 x) (hidden 48), one
block with a linear shortcut (32 -> 24), phi between stages, a Linear(24 -> 10) head; weights N(0, 1/fan_in),
biases N(0, 0.01).  Reported: naive (the sum-product form), ECLipsE-Fast, combined and optimized (50
iterations) composed per stage, the pattern / Jacobian lower bound, and the ratios to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import lipcert
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network

from run_info import machine

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "silu", "gelu")
METHODS = ("naive", "eclipse-fast", "combined", "optimized")


def _chain(gen: torch.Generator, widths: list[int], act: str) -> Network:
    ws = [torch.randn(widths[k + 1], widths[k], generator=gen, dtype=torch.float64) / widths[k] ** 0.5
          for k in range(len(widths) - 1)]
    bs = [0.1 * torch.randn(widths[k + 1], generator=gen, dtype=torch.float64) for k in range(len(widths) - 1)]
    return Network.from_weights(ws, bs, act)


def residual_net(seed: int, act: str) -> GraphNetwork:
    """The benchmark net of the module docstring, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    stages: list[Network | Residual] = [_chain(gen, [16, 32], act)]
    stages += [Residual(_chain(gen, [32, 48, 32], act)) for _ in range(3)]
    stages.append(Residual(_chain(gen, [32, 48, 24], act), torch.randn(24, 32, generator=gen, dtype=torch.float64)
                           / 32 ** 0.5))
    stages.append(_chain(gen, [24, 10], act))
    net = graph_network(stages, [act] * (len(stages) - 1))
    assert isinstance(net, GraphNetwork)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "graph_bounds.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: with the cores shared, two threads spin-wait (8-100x slower here)
    start = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        for act in ACTIVATIONS:
            net = residual_net(seed, act)
            low = lipcert.lower_bound(net, restarts=4, samples=128)
            values, seconds = {}, {}
            for m in METHODS:
                b = lipcert.lipschitz(net, m, options={"iterations": 50} if m == "optimized" else None)
                values[m], seconds[m] = b.value, b.seconds
                if b.value < low.value:
                    sys.exit(f"UNSOUND: seed {seed} {act} {m} {b.value} < lower bound {low.value}")
            rows.append((seed, act, values, seconds, low.value))
            print(seed, act, {m: round(v, 4) for m, v in values.items()}, round(low.value, 4), flush=True)
    head = "| seed | activation | " + " | ".join(METHODS) + " | lower | combined / lower | optimized / lower | " \
           "combined / naive | seconds (combined, optimized) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for seed, act, v, s, low in rows:
        lines.append(f"| {seed} | {act} | " + " | ".join(f"{v[m]:.4g}" for m in METHODS) +
                     f" | {low:.4g} | {v['combined'] / low:.2f} | {v['optimized'] / low:.2f} | "
                     f"{v['combined'] / v['naive']:.3f} | {s['combined']:.2f}, {s['optimized']:.1f} |")
    text = "\n".join([
        "# Bounds of random residual networks (docs/decisions.md 29-31)", "",
        f"Command: `python benchmarks/graph_bounds.py --seeds {args.seeds}`.  "
        f"Machine: {machine()}; one torch thread; total {(time.perf_counter() - start) / 60:.1f} min.", "",
        "Every method runs on each chain (stem, the three identity blocks' branches, the linear-shortcut "
        "block's branch, the head) and is composed as prod over stages, per block the lesser of ||S|| + Lip(g) "
        "and the block certificate (one-hidden-layer branches); combined and optimized also carry a form "
        "through the whole graph (decisions 31) and keep the lesser.  The lower bound is the larger of the "
        "pattern ascent on the linearized graph and the sampled Jacobian norm.", "",
        *lines, ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
