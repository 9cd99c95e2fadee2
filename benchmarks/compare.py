"""lipcert against auto_LiRPA (IBP, CROWN, alpha-CROWN) on the shared models and lipcert's demo model.

Run:  python benchmarks/compare.py [--data ../shared/data] [--n 100] [--n-alpha 10] [--out benchmarks/results/compare.md]

For every ONNX model of the shared data folder (the models of benchmarks/certify.py) and the
bundled Lipschitz-trained Fashion-MNIST demo model: certified accuracy at standard L2 and
L-infinity radii of lipcert (naive, ECLipsE-Fast, combined) and of auto_LiRPA's IBP, CROWN and
alpha-CROWN (alpha-CROWN on the first --n-alpha inputs only: it is 20-100x slower than CROWN), on
the same model (rebuilt from the same file), inputs, norm and radii; the lipschitz-first strategy
(lipcert, then CROWN on what is left: lipcert.combine) against CROWN alone; the PGD upper bound;
time per input.  Torch runs with one thread.  The markdown is rewritten after every model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert import datasets, demo
from lipcert.adapters import lirpa

from run_info import SHARED_DATA, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify import MODELS, eps_text  # noqa: E402  (the shared-model list of the certify benchmark)

METHODS = ("naive", "eclipse-fast", "combined")
VERIFIERS = ("ibp", "crown", "alpha-crown")
EPS = {("mnist", "2"): (0.5, 1.0), ("mnist", "inf"): (0.02, 0.05),
       ("fashion-mnist", "2"): (0.5, 1.0), ("fashion-mnist", "inf"): (0.02, 0.05),
       ("cifar10", "2"): (36 / 255, 72 / 255), ("cifar10", "inf"): (2 / 255, 8 / 255)}


@dataclass(frozen=True)
class Case:
    label: str
    path: Path
    dataset: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def cases(root: Path) -> list[Case]:
    bundled = Path(str(resources.files("lipcert").joinpath("data", "demo_model.onnx")))
    shared = [Case(Path(m.path).stem, root / "models" / m.path, m.dataset, m.mean, m.std) for m in MODELS]
    slow_last = sorted(shared, key=lambda c: c.label.startswith(("mnist-net_256x4", "mnist-net_256x6", "ffnnSIGMOID")))
    return [Case("lipcert demo (GloRo-trained)", bundled, "fashion-mnist"), *slow_last]


def bench(case: Case, root: Path, n: int, n_alpha: int, steps: int) -> dict:
    net = lipcert.load(case.path, mean=case.mean, std=case.std)
    if case.dataset == "fashion-mnist":
        samples = demo.load_samples()  # float32 in [0, 1]
        x, y = samples.x[:n], samples.y[:n]
    else:
        data = datasets.load(case.dataset, root=root / "datasets", limit=n, download=False)
        x, y = data.x, data.y
    x = np.asarray(x, dtype=np.float64).reshape(len(y), *net.input_shape)
    y = np.asarray(y)
    print(f"{case.label}: {len(y)} inputs", flush=True)
    bounds = {m: lipcert.lipschitz(net, m) for m in METHODS}
    start = time.perf_counter()
    lm = lirpa.bounded_module(case.path, mean=case.mean, std=case.std)
    out = {"case": case, "n": len(y), "n_alpha": min(n_alpha, len(y)), "build_s": time.perf_counter() - start,
           "bound_s": {m: b.seconds for m, b in bounds.items()}, "norms": {}}
    for norm in ("2", "inf"):
        eps = EPS[(case.dataset, norm)]
        cert = lipcert.certify(net, x, y, norm=norm, bound=list(bounds.values()))
        row = {"eps": eps, "clean": cert.clean_accuracy, "radii_s": cert.timings["radii"],
               "lipcert": {m: [float(cert.certified(e, m).mean()) for e in eps] for m in METHODS},
               "median": {m: cert.radius_stats(m)["median"] for m in METHODS}, "verifier": {}, "seconds": {}}
        masks = {m: [cert.certified(e, m) for e in eps] for m in METHODS}
        for v in VERIFIERS:
            k, grid = (out["n_alpha"], eps[:1]) if v == "alpha-crown" else (len(y), eps)
            res = lirpa.verify(lm, x[:k], y[:k], eps=grid, norm=norm, verifier=v)
            row["verifier"][v] = [float(c.mean()) for c in res.verified] + [None] * (len(eps) - len(grid))
            row["seconds"][v] = res.seconds_per_input()
            masks[v] = list(res.verified)
            print(f"  L{norm} {v}: {row['verifier'][v]} ({1e3 * row['seconds'][v]:.3g} ms/input)", flush=True)
        # lipschitz-first from the same per-input results (CROWN bounds each input independently of its
        # batch): lipcert combined, then CROWN on the correct inputs it left, at CROWN's measured time per input
        lip = masks["combined"]
        left = [int((cert.correct & ~m).sum()) for m in lip]
        lip_s = bounds["combined"].seconds + cert.timings["radii"] / len(bounds)  # radii of combined alone
        row["first"] = {"certified": [float((m | c).mean()) for m, c in zip(lip, masks["crown"])],
                        "by_lipcert": [float(m.mean()) for m in lip],
                        "total_s": [lip_s + k * row["seconds"]["crown"] for k in left],
                        "crown_alone_s": row["seconds"]["crown"] * len(y)}
        row["upper"], row["violations"] = [], 0
        for i, e in enumerate(eps):
            att = lipcert.attack(net, x, y, norm=norm, eps=e, steps=steps, restarts=1,
                                 input_range=net.input_range or (0.0, 1.0))
            row["upper"].append(float(att.robust_accuracy))
            for tool, m in masks.items():
                if i < len(m):
                    row["violations"] += int((m[i] & att.success[:len(m[i])]).sum())
        out["norms"][norm] = row
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def wins(results: list[dict]) -> list[str]:
    """One line per (model, norm): the eps where lipcert (combined) or CROWN certifies more inputs."""
    out = []
    for r in results:
        for norm in ("2", "inf"):
            row = r["norms"][norm]
            lip, crown = row["lipcert"]["combined"], row["verifier"]["crown"]
            parts = [f"eps={eps_text(e)}: " + ("lipcert" if a > b else "CROWN" if b > a else "tie")
                     + f" ({_pct(a)} vs {_pct(b)} %)" for e, a, b in zip(row["eps"], lip, crown)]
            out.append(f"- {r['case'].label}, {'L2' if norm == '2' else 'L-inf'}: " + "; ".join(parts))
    return out


def render(results: list[dict], args: argparse.Namespace, seconds: float, done: bool) -> str:
    lines = [
        "# lipcert against auto_LiRPA (IBP, CROWN, alpha-CROWN)", "",
        f"Command: `python benchmarks/compare.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; auto_LiRPA 0.3 (float64); total {seconds / 60:.1f} min"
        f"{'' if done else ' (partial: still running)'}. Under load, compare timings as ratios within a row, "
        "not across runs.", "",
        "Same model (auto_LiRPA runs on the float64 torch module rebuilt from the same file; its outputs equal "
        "lipcert's Network), same inputs (the first n test images; the demo model's bundled Fashion-MNIST test "
        "images), same property: the whole norm ball of radius eps (raw [0, 1] pixels, no clipping) keeps the "
        "true class; verifiers use the margin specification f_y - f_j for every j != y. Certified accuracy in % "
        f"of n inputs; alpha-CROWN (20 iterations) on the first {args.n_alpha} inputs at the first eps only (it took "
        "up to 44 s per input on the conv nets here). 'first' = lipschitz-first "
        "(lipcert combined, then CROWN on the correct inputs it left, as lipcert.combine does); its accuracy "
        "is the union of the per-input results above and its time is lipcert's (including the one-off bound) plus "
        "CROWN's measured time per input times the inputs left. PGD: 1 restart of "
        f"{args.steps} steps, an upper bound on robust accuracy; 'violations' counts inputs certified by any tool "
        "yet broken (must be 0).", "",
    ]
    for norm in ("2", "inf"):
        lines += [f"## Certified accuracy, {'L2' if norm == '2' else 'L-inf'}", "",
                  "| model | eps | clean | naive | ECLipsE-Fast | combined | IBP | CROWN | alpha-CROWN | first | "
                  "PGD upper | violations |", "|---|---|" + "---:|" * 10]
        for r in results:
            row = r["norms"][norm]
            for i, e in enumerate(row["eps"]):
                lines.append(
                    f"| {r['case'].label if i == 0 else ''} | {eps_text(e)} | {_pct(row['clean'])} | "
                    + " | ".join(_pct(row["lipcert"][m][i]) for m in METHODS) + " | "
                    + " | ".join(_pct(row["verifier"][v][i]) for v in VERIFIERS)
                    + f" | {_pct(row['first']['certified'][i])} | {_pct(row['upper'][i])} | "
                    + (str(row["violations"]) if i == 0 else "") + " |")
        lines.append("")
    lines += ["## Time", "",
              "Per input, in ms: lipcert = (bound + radii of all n inputs) / n for the combined bound (the bound is "
              "computed once per model and serves every eps and both norms); verifiers per input and eps. "
              "'first' and 'CROWN alone' are totals in s over the n inputs at each eps.", "",
              "| model | norm | combined bound (s) | lipcert ms/input | IBP | CROWN | alpha-CROWN | first total (s) | "
              "CROWN alone (s) |", "|---|---|" + "---:|" * 7]
    for r in results:
        for norm in ("2", "inf"):
            row = r["norms"][norm]
            lip = 1e3 * (r["bound_s"]["combined"] + row["radii_s"]) / r["n"]
            lines.append(f"| {r['case'].label} | {'L2' if norm == '2' else 'L-inf'} | {r['bound_s']['combined']:.3g} | "
                         f"{lip:.3g} | " + " | ".join(f"{1e3 * row['seconds'][v]:.3g}" for v in VERIFIERS)
                         + " | " + " / ".join(f"{t:.3g}" for t in row["first"]["total_s"])
                         + f" | {row['first']['crown_alone_s']:.3g} |")
    lines += ["", "## Where each wins", "", *wins(results)]
    lines += ["", "## VNN-COMP instances", "",
              "The VNN-COMP 2021 instances shipped in ../shared/data (lipcert vnnlib as a pre-filter) are reported in "
              "benchmarks/results/vnncomp.md.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-alpha", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--only", default=None, help="comma-separated model labels to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "compare.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = []
    todo = [c for c in cases(args.data) if args.only is None or c.label in args.only.split(",")]
    for case in todo:
        results.append(bench(case, args.data, args.n, args.n_alpha, args.steps))
        args.out.write_text(render(results, args, time.perf_counter() - start, len(results) == len(todo)))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
