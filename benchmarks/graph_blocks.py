"""Network graphs: the carried-form block recursion against the stagewise composition (decisions 31).

Run:  python benchmarks/graph_blocks.py [--seeds 3] [--out benchmarks/results/graph_blocks.md]

Graphs of tests/test_graph.py's residual_net shape: chain(12 -> 16) act, 3 identity residual blocks
(16 -> 18 -> 16) each followed by act, a residual block with a random 1x1 shortcut (16 -> 16 -> 14) act,
chain(14 -> 10); weights N(0, 1/fan_in).  Per graph: `lipschitz(net, "naive")` and `"combined"` of
bounds/graph.py (chain bounds composed stage by stage, ||S|| + Lip(g) per block), `graph_recursion`
(bounds/graph_blocks.py) and the graph lower bound; every upper bound is asserted to be >= it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lipcert.bounds import lipschitz, lower_bound
from lipcert.bounds.graph_blocks import graph_recursion
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network

from run_info import machine

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "silu", "gelu")


def chain(rng: np.random.Generator, widths: list[int], act: str) -> Network:
    ws = [rng.standard_normal((widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(len(widths) - 1)]
    bs = [rng.standard_normal(widths[k + 1]) * 0.1 for k in range(len(widths) - 1)]
    return Network.from_weights(ws, bs, act)


def graph(rng: np.random.Generator, act: str) -> GraphNetwork:
    stages: list[Network | Residual] = [chain(rng, [12, 16], act)]
    stages += [Residual(chain(rng, [16, 18, 16], act)) for _ in range(3)]
    stages.append(Residual(chain(rng, [16, 16, 14], act), torch.as_tensor(rng.standard_normal((14, 16)) / 4.0)))
    stages.append(chain(rng, [14, 10], act))
    net = graph_network(stages, [act] * (len(stages) - 1))
    assert isinstance(net, GraphNetwork)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "graph_blocks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    lines = ["| activation | seed | naive | stagewise combined | recursion | lower bound | recursion / combined | "
             "recursion / LB | t combined (s) | t recursion (s) |", "|---|---:|" + "---:|" * 8]
    ratios = []
    for act in ACTIVATIONS:
        for seed in range(args.seeds):
            net = graph(np.random.default_rng(seed), act)
            t0 = time.perf_counter()
            comb = lipschitz(net, "combined").value
            t1 = time.perf_counter()
            rec = graph_recursion(net).value
            t2 = time.perf_counter()
            naive = lipschitz(net, "naive").value
            low = lower_bound(net, restarts=3, samples=64).value
            assert min(comb, rec, naive) >= low, (act, seed)
            ratios.append(rec / comb)
            lines.append(f"| {act} | {seed} | {naive:.4g} | {comb:.4g} | {rec:.4g} | {low:.4g} | {rec / comb:.3f} | "
                         f"{rec / low:.3f} | {t1 - t0:.2f} | {t2 - t1:.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join([
        "# Network graphs: the block recursion against the stagewise composition", "",
        f"Command: `{' '.join(['python benchmarks/graph_blocks.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine()}; total {(time.perf_counter() - start) / 60:.1f} min.", "",
        (__doc__ or "").split("\n\n")[2], "",
        f"Mean recursion / stagewise combined: {statistics.mean(ratios):.3f} (min {min(ratios):.3f}, "
        f"max {max(ratios):.3f}).", "", *lines, ""])
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
