"""Where `combined` spends its time against ECLipsE-Fast on wide Gaussian nets (issue 20 part 3).

Run:  python benchmarks/combined_speed.py [--widths 500,1000] [--depths 10,50,100] [--threads 1,2]
                                          [--out benchmarks/results/combined_speed.md]

For each thread count, width and depth: one net W ~ N(0, 1/fan_in) (input = width, one output),
ECLipsE-Fast and combined run once each on it in this process (one run per configuration: the
machine's 2 cores are shared), their values, times and time ratio; the number of trajectories
whose Gamma_k combined computes (the passes that share multipliers share a
trajectory, docs/decisions.md 11(b)) per hidden layer, counted as combined's Gram products over Fast's
(one per layer; both less the final G_L, few for combined); how many trajectories reach the output,
and the trajectories per layer if all others were dropped at layer 1 (the floor of any earlier pruning
that keeps the value: 1 + (L - 2) x that number, over the L - 1 hidden layers); and, from a cProfile run of each method, the seconds
in the four per-trajectory operations: the triangular solve R^-T V^T, the Gram product, the
Cholesky tests and the Lanczos eigenvalue estimates.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shlex
import sys
import time
from pathlib import Path

import torch

import lipcert
from lipcert.bounds import closed_form
from lipcert.random_nets import gaussian

from run_info import REPO, machine

# cProfile keys (file suffix, function name) of the per-trajectory operations
OPERATIONS = {
    "solve": ("recursion.py", "solve_rt"),
    "gram": ("recursion.py", "gram"),
    "cholesky": ("recursion.py", "_lower_cholesky"),
    "lanczos": ("eigen.py", "lanczos"),
}


def final_trajectories(net: lipcert.Network) -> int:
    """Distinct trajectories that reach the output in combined (passes sharing multipliers share one)."""
    weights = [w.double() for w in net.weights]
    passes = closed_form.combined(weights, [(a.double(), b.double()) for a, b in net.slopes()])
    return len({id(r.gram) for name, r in passes.items() if name != "naive"})


def profile(net: lipcert.Network, method: str) -> tuple[float, dict[str, tuple[float, int]]]:
    """Wall time of one run under cProfile and (cumulative seconds, primitive calls) per operation."""
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(lipcert.lipschitz, net, method)
    seconds = time.perf_counter() - start
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out = {}
    for op, (suffix, name) in OPERATIONS.items():
        rows = [v for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == name]
        out[op] = (sum(v[3] for v in rows), sum(v[0] for v in rows))
    return seconds, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="500,1000")
    p.add_argument("--depths", default="10,50,100")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "combined_speed.md")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    cmd = shlex.join(["python", "benchmarks/combined_speed.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# combined against ECLipsE-Fast: time ratio and where the time goes\n\n{args.note}\n\n"
             f"Command: `{cmd.strip()}`\n",
             "| threads | width | depth | Fast value | combined value | Fast time | combined time | combined / Fast "
             "| trajectories / layer | reaching the output | floor | combined: solve, gram, cholesky, lanczos (s, calls) "
             "| Fast: solve, gram, cholesky, lanczos (s, calls) |", "|" + "---|" * 13]
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for depth in [int(d) for d in args.depths.split(",")]:
            for width in [int(w) for w in args.widths.split(",")]:
                net = gaussian([width] * depth + [1], seed=0)
                lipcert.lipschitz(gaussian([width] * 3 + [1], seed=1), "combined")  # warm up this size
                start = time.perf_counter()
                fast = lipcert.lipschitz(net, "eclipse-fast")
                t_fast = time.perf_counter() - start
                start = time.perf_counter()
                comb = lipcert.lipschitz(net, "combined")
                t_comb = time.perf_counter() - start
                _, ops_c = profile(net, "combined")
                _, ops_f = profile(net, "eclipse-fast")
                # Gram products computed (primitive calls: each Gamma_k and each final G_L), per hidden layer
                evaluated = (ops_c["gram"][1] - 1) / (ops_f["gram"][1] - 1)
                final = final_trajectories(net)
                floor = (1 + (depth - 2) * final) / (depth - 1)
                cell = lambda ops: ", ".join(f"{s:.3g} ({n})" for s, n in ops.values())  # noqa: E731
                row = (f"| {threads} | {width} | {depth} | {fast.value:.10g} | {comb.value:.10g} | {t_fast:.3g} s "
                       f"| {t_comb:.3g} s | {t_comb / t_fast:.2f}x | {evaluated:.2f} | {final} | {floor:.2f} "
                       f"| {cell(ops_c)} | {cell(ops_f)} |")
                print(row, flush=True)
                lines.append(row)
                args.out.write_text("\n".join(lines) + f"\n\nMachine: {machine()}.\n")  # after every net
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
