"""Certified conv-layer spectral norms on a ResNet-18-shaped suite (issue 18, part 1).

Run:  python benchmarks/conv_norms.py [--seed 0] [--baseline REV] [--out benchmarks/results/conv_norms.md]

The 20 convolutions of a CIFAR ResNet-18 (3x3 convs, stride-2 3x3 and 1x1 shortcuts, 64 -> 512
channels, 32x32 -> 4x4) with He-normal random kernels N(0, 2 / (C_in k^2)).  For each layer:
lipcert's certified bound (:func:`lipcert.bounds.conv_norm.conv_norm`), each estimator's value,
and a reference: the exact norm by dense SVD where the matrix has at most 4096 rows or columns,
else a rigorous *lower* bound ||A v|| / ||v|| from the top Ritz vector of a Lanczos run on A^T A
(matrix-free).  ratio = bound / reference; a ratio below 1 would be a soundness failure, and
since the reference is at most the exact norm, the true ratio is at most the one shown.
With ``--baseline REV`` the conv_norm module of git revision REV runs on every layer too, right
before the current one (same process, same load), and both times are shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import time
from types import ModuleType
from pathlib import Path

import torch

from lipcert.bounds.conv_norm import conv_norm
from lipcert.operators import Conv2dOperator

from run_info import machine

# name, C_in, C_out, kernel, stride, input size
RESNET18 = [("conv1", 3, 64, 3, 1, 32)]
for _b in range(2):
    RESNET18 += [(f"l1.{_b}.c1", 64, 64, 3, 1, 32), (f"l1.{_b}.c2", 64, 64, 3, 1, 32)]
for _stage, (_ci, _co, _n) in enumerate([(64, 128, 32), (128, 256, 16), (256, 512, 8)], start=2):
    RESNET18 += [(f"l{_stage}.0.c1", _ci, _co, 3, 2, _n), (f"l{_stage}.0.c2", _co, _co, 3, 1, _n // 2),
                 (f"l{_stage}.0.sc", _ci, _co, 1, 2, _n), (f"l{_stage}.1.c1", _co, _co, 3, 1, _n // 2),
                 (f"l{_stage}.1.c2", _co, _co, 3, 1, _n // 2)]


def reference(op: Conv2dOperator, seed: int) -> tuple[float, str]:
    """Exact norm (dense SVD) where small, else a rigorous lower bound from a Lanczos Ritz vector."""
    rows, cols = op.shape
    if min(rows, cols) <= 4096 and max(rows, cols) <= 20000:
        return float(torch.linalg.matrix_norm(op.dense(), 2)), "exact (dense SVD)"
    gen = torch.Generator().manual_seed(seed)
    n, steps = cols, 80
    basis = torch.zeros(steps + 1, n, dtype=torch.float64)
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    basis[0] = v / v.norm()
    alphas, betas = [], []
    for j in range(steps):
        w = op.rmatmat(op.matmat(basis[j][None]))[0]
        alphas.append(float(basis[j] @ w))
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        betas.append(float(w.norm()))
        basis[j + 1] = w / betas[-1]
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64)) + torch.diag(torch.tensor(betas[:-1], dtype=torch.float64), 1) + torch.diag(
        torch.tensor(betas[:-1], dtype=torch.float64), -1)
    _, vecs = torch.linalg.eigh(t)
    ritz = basis[:steps].T @ vecs[:, -1]
    return float(op.matmat(ritz[None]).norm() / ritz.norm()), "lower bound (Lanczos Ritz vector, 80 steps)"


def baseline_module(rev: str) -> ModuleType:
    """lipcert/bounds/conv_norm.py as of git revision ``rev``, imported inside the lipcert.bounds package."""
    repo = Path(__file__).resolve().parent.parent
    src = subprocess.check_output(["git", "show", f"{rev}:lipcert/bounds/conv_norm.py"], cwd=repo, text=True)
    spec = importlib.util.spec_from_loader("lipcert.bounds._baseline_conv_norm", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "lipcert.bounds"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(src, f"{rev}:conv_norm.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default=None, help="git revision whose conv_norm also runs, for timing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv_norms.md")
    args = parser.parse_args()
    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]])
    start_line = machine("at the start")
    print(f"seed {args.seed}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    old = baseline_module(args.baseline) if args.baseline else None
    rows, total, worst, old_total = [], 0.0, 0.0, 0.0
    for name, ci, co, k, s, n in RESNET18:
        kernel = torch.randn(co, ci, k, k, generator=gen, dtype=torch.float64) * (2 / (ci * k * k)) ** 0.5
        op = Conv2dOperator.conv(kernel, (ci, n, n), stride=s, padding=k // 2)
        old_cell = ""
        if old is not None:
            before = old.conv_norm(op)
            old_total += before.seconds
            old_cell = f"{before.value:.5f} | {before.seconds:.2f} | "
        t0 = time.perf_counter()
        bound = conv_norm(op)
        total += time.perf_counter() - t0
        ref, how = reference(op, args.seed)
        ratio = bound.value / ref
        worst = max(worst, ratio)
        est = ", ".join(f"{m} {v:.5f}" for m, v in bound.estimates.items())
        line = (f"| {name} | {ci}->{co}, k{k}, s{s}, {n}x{n} | {ref:.5f} | {how.split(' (')[0]} | {bound.value:.5f} | "
                f"{ratio:.4f} | {bound.method} | {est} | {old_cell}{bound.seconds:.2f} |")
        print(line, flush=True)
        rows.append(line)
    text = "\n".join([
        "# Certified conv-layer spectral norms (ResNet-18-shaped suite, random kernels)", "",
        f"Command: `{command}` (seed {args.seed}).", "", start_line + ".", machine() + ".", "",
        "reference: exact norm by dense SVD where it fits, else a rigorous lower bound ||Av||/||v|| (Lanczos "
        "Ritz vector of A^T A, 80 steps); ratio = certified bound / reference (>= 1 is sound; the true ratio "
        "to the exact norm is at most this).", "",
        "| layer | shape | reference | kind | certified bound | ratio | method | estimators | "
        + (f"bound at {args.baseline} | seconds at {args.baseline} | " if old else "") + "seconds |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if old else "") + "---|", *rows, "",
        f"All 20 layers: {total:.1f} s for the certified bounds (references not counted); worst ratio {worst:.4f}."
        + (f" At {args.baseline}, in the same process: {old_total:.1f} s." if old else ""), ""])
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"total {total:.1f} s (baseline {old_total:.1f} s), worst ratio {worst:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
