"""Tightness of every bound method: math.md Tables A and B style, on fresh seeds.

Run:  python benchmarks/tightness.py [--seeds 2] [--sdp-width 20] [--out benchmarks/results/tightness.md]

Table A: Gaussian MLPs, W ~ N(0, 1/fan_in), input dim = width, one output, no biases.
Table B: the original ECLipsE benchmark (input 4, width 80, one non-negative output), where the
all-active product is a certified lower bound and ECLipsE/LipSDP-Neuron are exact.
Every value is divided by ECLipsE-Fast (Table A) or by the naive product (Table B, as published).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import lipcert
from lipcert.errors import LipcertError
from lipcert.random_nets import eclipse_benchmark, gaussian

from run_info import machine

CLOSED = ("naive", "eclipse-fast", "gc(1.99)", "shift(1.5)", "gcs(1)", "gcs(1.5)", "greedy", "combined")
SDP = ("eclipse", "lipsdp-neuron", "lipsdp-layer")


def run_methods(net: lipcert.Network, methods: tuple[str, ...]) -> dict[str, tuple[float, float] | None]:
    out: dict[str, tuple[float, float] | None] = {}
    for m in methods:
        try:
            b = lipcert.lipschitz(net, m)
            out[m] = (b.value, b.seconds)
        except LipcertError as exc:
            print(f"  {m}: {exc}")
            out[m] = None
    return out


def table_a(seeds: list[int], sdp_width: int) -> tuple[list[str], list[float]]:
    rows = ["| net (w,d,seed) | " + " | ".join(CLOSED + SDP) + " | pattern LB | Jacobian LB |",
            "|---" * (len(CLOSED) + len(SDP) + 3) + "|"]
    comb_ratios = []
    for width in (20, 50, 100):
        for depth in (2, 5, 10):
            for seed in seeds:
                net = gaussian([width] * depth + [1], seed=seed)
                methods = CLOSED + (SDP if width <= sdp_width or (width <= 50 and depth == 2) else ())
                res = run_methods(net, methods)
                low = lipcert.lower_bound(net)
                fast = res["eclipse-fast"][0]  # type: ignore[index]
                comb_ratios.append(res["combined"][0] / fast)  # type: ignore[index]
                cells = []
                for m in CLOSED + SDP:
                    r = res.get(m)
                    cells.append("–" if r is None else f"{r[0] / fast:.3f} ({r[1]:.2g}s)")
                rows.append(f"| {width},{depth},{seed} | " + " | ".join(cells)
                            + f" | {low.pattern / fast:.3f} | {low.jacobian / fast:.3f} |")
                print(rows[-1], flush=True)
    return rows, comb_ratios


def table_b() -> tuple[list[str], list[bool]]:
    rows = ["| layers | naive (raw) | ECLipsE-Fast | GCs(1) | combined | greedy | ECLipsE | all-active LB | "
            "Fast / LB | combined / LB | combined time |", "|---" * 11 + "|"]
    strict = []
    for layers in (2, 5, 10, 20, 30, 50, 75, 100):
        net = eclipse_benchmark(layers)
        res = run_methods(net, ("naive", "eclipse-fast", "gcs(1)", "combined", "greedy")
                          + (("eclipse",) if layers <= 5 else ()))
        naive = res["naive"][0]  # type: ignore[index]
        product = net.weights[0]
        for w in net.weights[1:]:
            product = w @ product
        lb = float(torch.linalg.matrix_norm(product, ord=2))
        fast, comb = res["eclipse-fast"][0], res["combined"][0]  # type: ignore[index]
        strict.append(comb < fast)
        ecl = res.get("eclipse")
        rows.append(f"| {layers} | {naive:.4g} | {fast / naive:.4f} | {res['gcs(1)'][0] / naive:.4f} | "  # type: ignore[index]
                    f"{comb / naive:.4f} | {res['greedy'][0] / naive:.4f} | "  # type: ignore[index]
                    f"{'–' if ecl is None else f'{ecl[0] / naive:.4f}'} | {lb / naive:.4f} | {fast / lb:.3f} | "
                    f"{comb / lb:.3f} | {res['combined'][1]:.2f}s |")  # type: ignore[index]
        print(rows[-1], flush=True)
    return rows, strict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="fresh seeds per Gaussian net (1000, 1001, ...)")
    parser.add_argument("--sdp-width", type=int, default=20, help="run the SDP methods up to this width")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tightness.md")
    args = parser.parse_args()
    start = time.perf_counter()
    a_rows, comb = table_a(list(range(1000, 1000 + args.seeds)), args.sdp_width)
    b_rows, strict = table_b()
    mean = statistics.mean(comb)
    lines = [
        "# Tightness of lipcert's bounds",
        "",
        f"Command: `python benchmarks/tightness.py --seeds {args.seeds} --sdp-width {args.sdp_width}` "
        f"({time.perf_counter() - start:.0f} s in all). Machine: {machine()}. Times are wall times; they "
        "are only meaningful when nothing else runs on the machine.",
        "",
        "## Table A: Gaussian MLPs (values / ECLipsE-Fast, time in brackets)",
        "",
        "W ~ N(0, 1/fan_in), input dimension = width, 1 output, no biases, seeds 1000+ (the nets of",
        "math.md Table A used seeds 0 and 1). d = number of weight matrices. The lower bounds bound",
        "every method from below (pattern: sup over activation patterns; Jacobian: this net's own constant).",
        "",
        *a_rows,
        "",
        f"Mean ratio combined / ECLipsE-Fast over the {len(comb)} nets: **{mean:.3f}** "
        f"(target <= 0.70: {'met' if mean <= 0.70 else 'NOT met'}); worst {max(comb):.3f}.",
        "",
        "## Table B: the ECLipsE benchmark (values / naive, as published)",
        "",
        "Input 4, width 80, 1 output, non-negative weights (ECLipsE_matlab generator, rd = 0). ECLipsE-Fast",
        "reproduces the published column 0.925 0.905 0.914 0.881 0.864 0.823 0.796 0.751. With non-negative",
        "weights and biases every ReLU can be active at once, so the all-active product is a certified lower bound.",
        "",
        *b_rows,
        "",
        f"Combined strictly below ECLipsE-Fast at every depth: **{'yes' if all(strict) else 'no'}** "
        f"({sum(strict)}/{len(strict)}).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
