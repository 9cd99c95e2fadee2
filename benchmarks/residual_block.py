"""Residual-block certificates on random ResNet-style blocks (lipcert/bounds/residual_block.py; decisions 30-31).

Run:  python benchmarks/residual_block.py [--widths 16 32 64 128] [--blocks 50] [--optimized-blocks 20]
      [--sdp-blocks 10] [--branch 1.0 0.25] [--out benchmarks/results/residual_block.md]

Blocks h(x) = S x + G relu(W x + b), n inputs and outputs, m = 2n neurons: W ~ N(0, 2/n) and
G ~ branch * N(0, 2/m) (He scale), S = I for even block indices and S ~ N(0, 1/n) (a random 1x1 map)
for odd ones.  Per block: every closed-form rule, `combined`, `optimized`, the block SDP (cvxpy, on
the first --sdp-blocks blocks of widths with n + m <= 200) and the pattern lower bound; ratios are to
naive = ||S|| + ||G|| ||W|| (1 + ||G|| ||W|| when S = I).  Then every activation at one width,
chains of blocks (product of block constants against the carried-form recursion), and bottleneck
blocks with two hidden layers (m = n / 2) against 1 + the chain closed form of the branch alone.
Every upper bound is asserted to be >= the lower bound.  One BLAS thread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lipcert.activations import get_activation
from lipcert.bounds.block_lower import chain_pattern_bound
from lipcert.bounds.block_sdp import block_sdp
from lipcert.bounds.closed_form import combined
from lipcert.bounds.residual_block import ResidualBlock, block_constant, branch_chain, chain_constant

from run_info import machine

FAMILIES = ("sn(1)", "gc(1.99)", "shift(1.5)", "gcs(1.5)", "neuron")
ACTIVATIONS = ("relu", "tanh", "leaky_relu(0.1)", "sigmoid", "silu", "gelu")


def draw(n: int, m: int, branch: float, index: int, gen: torch.Generator) -> ResidualBlock:
    s = None if index % 2 == 0 else torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    w = torch.randn(m, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n)
    g = branch * torch.randn(n, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m)
    return ResidualBlock(s, w, g, torch.tensor(0.0), torch.tensor(1.0))


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def measure(b: ResidualBlock, optimized: bool, sdp: bool, gen: torch.Generator) -> dict[str, float]:
    comb, t_comb = timed(block_constant, b.shortcut, b.inner, b.outer, b.alpha, b.beta)
    naive = comb.per_rule["naive"]
    row = {"naive": naive, "combined": comb.value, "t_combined": t_comb,
           "pattern": chain_pattern_bound([b], restarts=4, generator=gen)}
    for fam in FAMILIES:
        row[fam] = min(v for k, v in comb.per_rule.items() if k.partition("(")[0] == fam.partition("(")[0]
                       and (fam == "neuron" or k == fam))
    if optimized:
        opt, row["t_optimized"] = timed(block_constant, b.shortcut, b.inner, b.outer, b.alpha, b.beta,
                                        method="optimized")
        row["optimized"] = opt.value
    if sdp:
        ref, row["t_sdp"] = timed(block_sdp, b.shortcut, b.inner, b.outer, b.alpha, b.beta)
        row["sdp"] = ref.value if ref.rule == "sdp" else math.nan
    for key in ("combined", "optimized", "sdp"):
        assert row.get(key, math.inf) >= row["pattern"] * (1 - 1e-9), (key, row)
    return row


def mean(rows: list[dict[str, float]], key: str, over: str | None = "naive") -> str:
    vals = [r[key] / (r[over] if over else 1.0) for r in rows if key in r and not math.isnan(r[key])]
    return f"{statistics.mean(vals):.3f}" if vals else "–"


def median(rows: list[dict[str, float]], key: str) -> str:
    vals = [r[key] for r in rows if key in r]
    return f"{statistics.median(vals):.3g}" if vals else "–"


def widths_table(args: argparse.Namespace, out: list[str]) -> None:
    out += ["| branch | n | m | blocks (opt / SDP) | " + " | ".join(FAMILIES) + " | combined | optimized | SDP | "
            "combined / SDP | optimized / SDP | combined / LB | t combined (s) | t optimized (s) | t SDP (s) |",
            "|---|---:|---:|---|" + "---:|" * (len(FAMILIES) + 9)]
    for branch in args.branch:
        for n in args.widths:
            m = 2 * n
            gen = torch.Generator().manual_seed(1000 * n + int(100 * branch))
            rows = [measure(draw(n, m, branch, i, gen), i < args.optimized_blocks, i < args.sdp_blocks and n + m <= 200,
                            gen) for i in range(args.blocks)]
            n_opt, n_sdp = sum("optimized" in r for r in rows), sum("sdp" in r for r in rows)
            out.append(f"| {branch:g} | {n} | {m} | {len(rows)} ({n_opt} / {n_sdp}) | "
                       + " | ".join(mean(rows, f) for f in FAMILIES)
                       + f" | {mean(rows, 'combined')} | {mean(rows, 'optimized')} | {mean(rows, 'sdp')} | "
                       f"{mean([r for r in rows if 'sdp' in r], 'combined', 'sdp')} | "
                       f"{mean([r for r in rows if 'sdp' in r and 'optimized' in r], 'optimized', 'sdp')} | "
                       f"{mean(rows, 'combined', 'pattern')} | {median(rows, 't_combined')} | "
                       f"{median(rows, 't_optimized')} | {median(rows, 't_sdp')} |")
            print(out[-1], flush=True)


def activations_table(args: argparse.Namespace, out: list[str]) -> None:
    n, m = 32, 64
    out += ["| activation | [alpha, beta] | blocks | combined / naive | optimized / naive | combined / LB | "
            "optimized / LB |", "|---|---|---:|---:|---:|---:|---:|"]
    for name in ACTIVATIONS:
        act = get_activation(name)
        gen = torch.Generator().manual_seed(7)
        rows = []
        for i in range(args.activation_blocks):
            b = draw(n, m, 1.0, i, gen)
            b = ResidualBlock(b.shortcut, b.inner, b.outer, torch.tensor(act.alpha), torch.tensor(act.beta))
            rows.append(measure(b, True, False, gen))
        out.append(f"| {name} | [{act.alpha:g}, {act.beta:g}] | {len(rows)} | {mean(rows, 'combined')} | "
                   f"{mean(rows, 'optimized')} | {mean(rows, 'combined', 'pattern')} | "
                   f"{mean(rows, 'optimized', 'pattern')} |")
        print(out[-1], flush=True)


def chains_table(args: argparse.Namespace, out: list[str]) -> None:
    out += ["| blocks | n | seed | product of block constants | recursion | recursion / product | pattern LB | "
            "recursion / LB | t (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for depth in (2, 4, 8):
        for seed in range(3):
            gen = torch.Generator().manual_seed(seed)
            blocks = [draw(32, 64, 0.5, i, gen) for i in range(depth)]
            bound, took = timed(chain_constant, blocks)
            low = chain_pattern_bound(blocks, restarts=2, generator=gen)
            assert bound.value >= low * (1 - 1e-9), (depth, seed)
            prod, rec = bound.per_rule["product"], bound.per_rule["recursion"]
            out.append(f"| {depth} | 32 | {seed} | {prod:.4g} | {rec:.4g} | {rec / prod:.3f} | {low:.4g} | "
                       f"{rec / low:.3f} | {took:.2f} |")
            print(out[-1], flush=True)


def bottleneck_table(args: argparse.Namespace, out: list[str]) -> None:
    out += ["| n | m | blocks | naive | 1 + Lip(branch) | recursion | recursion / naive | "
            "recursion / (1 + Lip(branch)) | recursion / LB | t (s) |", "|" + "---:|" * 10]
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    for n in (16, 32, 64):
        m = n // 2
        gen = torch.Generator().manual_seed(n)
        rows = []
        for _ in range(args.activation_blocks):
            ws = [torch.randn(m, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n),
                  torch.randn(m, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m),
                  torch.randn(n, m, generator=gen, dtype=torch.float64) * math.sqrt(2 / m)]
            blocks, head = branch_chain(None, ws, [zero, zero], [one, one])
            bound, took = timed(chain_constant, blocks, head)
            last = ResidualBlock(head, torch.zeros(1, n + m, dtype=torch.float64),
                                 torch.zeros(n, 1, dtype=torch.float64), zero, one)
            low = chain_pattern_bound([*blocks, last], restarts=4, generator=gen)
            assert bound.value >= low * (1 - 1e-9), n
            slopes = [(torch.zeros(m, dtype=torch.float64), torch.ones(m, dtype=torch.float64))] * 2
            branch = min(r.value for r in combined(ws, slopes).values())
            naive = 1 + math.prod(float(torch.linalg.matrix_norm(w, ord=2)) for w in ws)
            rows.append({"naive": naive, "branch": 1 + branch, "recursion": bound.value, "pattern": low, "t": took})
        out.append(f"| {n} | {m} | {len(rows)} | {mean(rows, 'naive', None)} | {mean(rows, 'branch', None)} | "
                   f"{mean(rows, 'recursion', None)} | {mean(rows, 'recursion')} | "
                   f"{mean(rows, 'recursion', 'branch')} | "
                   f"{mean(rows, 'recursion', 'pattern')} | {median(rows, 't')} |")
        print(out[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--branch", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--optimized-blocks", type=int, default=20)
    parser.add_argument("--sdp-blocks", type=int, default=10)
    parser.add_argument("--activation-blocks", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "residual_block.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    head = ["# Residual-block certificates: closed forms, optimized and the block SDP on random ResNet blocks", "",
            f"Command: `{' '.join(['python benchmarks/residual_block.py', *sys.argv[1:]])}`  ",
            f"Machine: {machine('at the start')}.", "", (__doc__ or "").split("\n\n")[2], ""]
    sections: list[tuple[str, list[str]]] = [("## Mean ratio to naive, per width (ReLU)", []),
                                             ("## Every activation (n = 32, m = 64, branch 1)", []),
                                             ("## Chains of blocks (n = 32, m = 64, branch 0.5)", []),
                                             ("## Bottleneck blocks x + W3 relu(W2 relu(W1 x)) (branch_chain)", [])]
    for (title, lines), fill in zip(sections, (widths_table, activations_table, chains_table, bottleneck_table)):
        fill(args, lines)
        body = [line for t, ls in sections for line in (t, "", *ls, "")]
        tail = [f"Machine: {machine()}; total {(time.perf_counter() - start) / 60:.1f} min.", ""]
        args.out.write_text("\n".join(head + body + tail))  # written after every section: nothing is lost
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
