"""Zoo benchmark: Lipschitz certification vs bound propagation on certifiably trained models.

For every zoo model (``benchmarks/zoo/models/*.onnx`` and the demo model ``lipcert/data/demo_model.onnx``),
on the first 200 Fashion-MNIST test images, under L2, at radii around the model's median certified radius
and at SDP-CROWN's Table-1 radius for its architecture (MNIST radii; Fashion-MNIST has the same
28 x 28 input space in [0, 1], so the radii carry over unscaled):

* lipcert: naive, ECLipsE-Fast, combined, optimized (``--optimized-seconds`` caps its wall time) and
  ``local=True`` (on the first ``--local-n`` images, beside the best global bound on the same images);
  time = bound + certify pass for all 200 images;
* auto_LiRPA 0.3: IBP and CROWN (margin lower bounds, one run per radius) on the first ``--lirpa-n``; alpha-CROWN
  (20 iterations, auto_LiRPA's default) on the first ``--alpha-n`` images at the SDP-CROWN radius and the
  median radius only (it costs seconds per image here);
* the Lipschitz-first strategy: lipcert's best radii, then CROWN only on the inputs left;
* the PGD upper bound (``lipcert.attack``) and a soundness check of every certificate against it.

Run from the repository root (one torch thread; each model's section records the machine and its
load average, and times are comparable within a model)::

    python benchmarks/zoo/bench.py --data-dir ../shared/data/datasets

writes ``benchmarks/results/zoo.md`` and ``benchmarks/results/zoo.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import lipcert
from lipcert import datasets
from lipcert.adapters.lirpa import load_auto_lirpa
from lipcert.attacks import soundness_violations

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import build_model  # noqa: E402  (the zoo's architectures, one definition)

sys.path.insert(0, str(REPO / "benchmarks"))
from run_info import machine  # noqa: E402

MODELS_DIR = REPO / "benchmarks" / "zoo" / "models"
RAW_DIR = REPO / "benchmarks" / "zoo" / "results"
FINDINGS = REPO / "benchmarks" / "zoo" / "findings.md"
ARCH_ORDER = ("mlp", "conv-small", "conv-deep")
DEMO = REPO / "lipcert" / "data" / "demo_model.onnx"
SDP_CROWN_EPS = {"mlp": 1.0, "conv-small": 0.3, "conv-deep": 0.3}  # Table 1, MNIST column
LIPSCHITZ_METHODS = ("naive", "eclipse-fast", "combined", "optimized")
LIRPA_METHODS = {"IBP": "IBP", "CROWN": "CROWN", "alpha-CROWN": "alpha-CROWN"}


@dataclass(frozen=True)
class Row:
    """Certified (or PGD-robust) accuracy of one method on one model at one L2 radius."""

    model: str
    method: str
    eps: float
    accuracy: float
    seconds: float
    n: int


# ---------------------------------------------------------------------------------------- models
def zoo_models() -> list[Path]:
    """The committed zoo models of :data:`ARCH_ORDER`, smallest (the demo model) first.  The residual models
    have benchmarks/graphs.py, ConvLarge benchmarks/conv_trained.py (its dense form does not fit here)."""
    return [DEMO] + [p for p in sorted(MODELS_DIR.glob("*.onnx"))
                     if card_of(p).get("architecture", "").split(":")[0] in ARCH_ORDER]


def card_of(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def torch_module(path: Path, card: dict) -> torch.nn.Sequential:
    """The trained torch module, rebuilt from the card's architecture and the ONNX initializers."""
    arch = card["architecture"].split(":")[0]
    model = build_model(arch, tuple(card["input"]["shape"]))
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
    model.load_state_dict(weights)
    return model.eval()


# ---------------------------------------------------------------------------------------- auto_LiRPA
def lirpa_certified(module: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, method: str,
                    batch_size: int) -> tuple[np.ndarray, float]:
    """Inputs whose auto_LiRPA margin lower bounds over the L2 ball are all > 0 (and correct); seconds."""
    lirpa = load_auto_lirpa()
    start = time.perf_counter()
    out = np.zeros(len(y), dtype=bool)
    bounded = lirpa.BoundedModule(module, x[:1], bound_opts={"sparse_features_alpha": False}, verbose=0)
    for lo in range(0, len(y), batch_size):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        k = 10
        others = torch.stack([torch.tensor([j for j in range(k) if j != int(t)]) for t in yb])
        c = torch.zeros(len(yb), k - 1, k)
        c.scatter_(2, yb[:, None, None].expand(-1, k - 1, 1), 1.0)
        c.scatter_(2, others[:, :, None], -1.0)
        ptb = lirpa.PerturbationLpNorm(norm=2, eps=eps)
        lb, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(xb, ptb),), C=c, method=method, bound_upper=False)
        with torch.no_grad():
            correct = module(xb).argmax(1) == yb
        out[lo:lo + batch_size] = ((lb.min(dim=1).values > 0) & correct).numpy()
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------- one model
def radii_grid(median: float, sdp_eps: float) -> list[float]:
    """0.5x, 1x, 1.5x the median certified radius (2 significant digits) and SDP-CROWN's radius."""
    around = {float(f"{f * median:.2g}") for f in (0.5, 1.0, 1.5)}
    return sorted(around | {sdp_eps})


def bench_model(path: Path, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple[list[Row], dict]:
    """All rows of one model and a summary (clean accuracy, radii grid, soundness)."""
    name = path.stem
    card = card_of(path)
    arch = card["architecture"].split(":")[0]
    net = lipcert.load(path, input_range=(0.0, 1.0))
    rows: list[Row] = []
    methods = [m for m in args.methods if m in lipcert.bounds.METHODS]
    certs: dict[str, lipcert.Certification] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        start = time.perf_counter()
        budget = {"pairs": True, "seconds": args.optimized_seconds}
        bound = lipcert.lipschitz(net, m, options=budget) if m == "optimized" and args.optimized_seconds else None
        certs[m] = lipcert.certify(net, x, y, method=m, bound=bound, progress=False)
        seconds[m] = time.perf_counter() - start
    n = len(y)
    k_local = min(args.local_n or n, n)
    local = None  # (certification, seconds) of local=True on the first k_local images
    if args.local:
        start = time.perf_counter()
        cert = lipcert.certify(net, x[:k_local], y[:k_local], method="combined", local=True, progress=False)
        local = cert, time.perf_counter() - start
        if k_local == n:
            certs["local"], seconds["local"] = local
            local = None
    best = max(certs, key=lambda m: certs[m].radius_stats()["median"])
    median = certs[best].radius_stats()["median"]
    grid = radii_grid(median, SDP_CROWN_EPS[arch])
    grid_median = float(f"{median:.2g}")
    print(f"{name}: clean {certs['naive'].clean_accuracy:.3f}, median radius ({best}) {median:.3f}, radii {grid}",
          flush=True)
    for m, cert in certs.items():
        rows += [Row(name, f"lipcert {m}", e, float(a), seconds[m], n)
                 for e, a in zip(grid, cert.certified_accuracy(grid))]
    if local is not None:  # local on a subset, beside the best global bound on the same images
        rows += [Row(name, f"lipcert local (first {k_local} images)", e, float(a), local[1], k_local)
                 for e, a in zip(grid, local[0].certified_accuracy(grid))]
        rows += [Row(name, f"lipcert {best} (local's {k_local} images)", e,
                     float(certs[best].certified(e)[:k_local].mean()), seconds[best] * k_local / n, k_local)
                 for e in grid]
    module = torch_module(path, card)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    violations = 0
    for e in grid:
        lipschitz_mask = certs[best].certified(e)
        for label, method in LIRPA_METHODS.items():
            alpha = label == "alpha-CROWN"
            if alpha and (args.alpha_n == 0 or e not in (grid_median, SDP_CROWN_EPS[arch])):
                continue
            k = min(args.alpha_n if alpha else args.lirpa_n, n)
            mask, s = lirpa_certified(module, xt[:k], yt[:k], e, method, args.lirpa_batch)
            rows.append(Row(name, f"auto_LiRPA {label}", e, float(mask.mean()), s, k))
            print(f"  eps {e:g}: {label} {mask.mean():.3f} on {k} ({s:.1f} s)", flush=True)
            if alpha:  # lipcert's best on the same images, for a like-for-like comparison
                rows.append(Row(name, f"lipcert {best} (alpha-CROWN's {k} images)", e,
                                float(lipschitz_mask[:k].mean()), seconds[best] * k / n, k))
        k = min(args.lirpa_n, n)
        rest = np.flatnonzero(~lipschitz_mask[:k] & certs[best].correct[:k])
        rest_mask, s = (lirpa_certified(module, xt[rest], yt[rest], e, "CROWN", args.lirpa_batch) if rest.size
                        else (np.zeros(0, dtype=bool), 0.0))
        rows.append(Row(name, "Lipschitz first, then CROWN", e,
                        float((lipschitz_mask[:k].sum() + rest_mask.sum()) / k), seconds[best] * k / n + s, k))
        result = lipcert.attack(net, x, y, norm=2, eps=e, steps=args.pgd_steps, restarts=args.pgd_restarts,
                                input_range=(0.0, 1.0), progress=False)
        rows.append(Row(name, "PGD upper bound", e, result.robust_accuracy, result.seconds, n))
        violations += sum(soundness_violations(c, result).size for c in certs.values())
        if local is not None:
            cert = local[0]
            violations += int((cert.correct & (cert.radii_of("local") >= e) & result.success[:k_local]).sum())
    summary = {"model": name, "arch": arch, "clean": certs["naive"].clean_accuracy, "best": best,
               "median_radius": median, "grid": grid, "soundness_violations": violations,
               # local radii have no bound of their own: the best global bound behind them (their floor)
               "lipschitz": {m: c.bounds[m].value if m in c.bounds else min(b.value for b in c.bounds.values())
                             for m, c in certs.items()},
               "training": card["training"]["margin_bound"], "train_seconds": card["training"]["wall_seconds"]}
    return rows, summary


# ---------------------------------------------------------------------------------------- report
def training_table(summaries: Sequence[dict]) -> list[str]:
    """Training bound vs accuracies on the full test set, from the model cards."""
    lines = ["## Training bound: lipcert closed form vs power iteration (model cards, full test set)", "",
             "| model | training bound | train time (s) | clean | certified 0.5 / 1.0 / 1.58 (combined) |",
             "|---|---|---:|---:|---|"]
    for s in summaries:
        card = card_of(DEMO if s["model"] == DEMO.stem else MODELS_DIR / f"{s['model']}.onnx")
        cert = card["test"]["certified_accuracy"]["combined"]
        lines.append(f"| {s['model']} | {s['training']} | {s['train_seconds']:.0f} | "
                     f"{100 * card['test']['clean_accuracy']:.2f} % | "
                     + " / ".join(f"{100 * v:.2f}" for v in cert.values()) + " % |")
    return lines + [""]


def targets(rows: Sequence[Row], summaries: Sequence[dict]) -> list[str]:
    """The issue's targets, checked on the rows: best lipcert vs alpha-CROWN (same images), combined vs naive."""
    lines = ["## Targets", "",
             "| model | eps | lipcert best on the same images (most accurate, then cheapest) | alpha-CROWN | time ratio alpha-CROWN / lipcert best (per image) "
             "| cheapest lipcert method certifying as much as alpha-CROWN, time ratio | combined - naive (points) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        get = {(r.method, r.eps): r for r in rows if r.model == s["model"]}
        for e in s["grid"]:
            alpha = get.get(("auto_LiRPA alpha-CROWN", e))
            mine = None
            if alpha is not None:  # lipcert on alpha-CROWN's images: the most accurate method, then the cheapest
                same = [r for (m, x), r in get.items() if x == e and m.startswith("lipcert ") and r.n == alpha.n
                        and ("(" not in m or m.endswith(f"(alpha-CROWN's {alpha.n} images)"))]
                mine = max(same, key=lambda r: (r.accuracy, -r.seconds / r.n), default=None)
                cheap = min((r for r in same if r.accuracy >= alpha.accuracy), key=lambda r: r.seconds / r.n,
                            default=None)
            pair = get.get(("lipcert combined", e)), get.get(("lipcert naive", e))
            gain = f"{100 * (pair[0].accuracy - pair[1].accuracy):+.1f}" if all(pair) else "-"
            if alpha and mine:
                def ratio(r: Row) -> str:
                    return f"{(alpha.seconds / alpha.n) / (r.seconds / r.n):.0f}x"

                def name(r: Row) -> str:
                    return r.method.removeprefix("lipcert ").split(" (")[0]

                enough = f"{name(cheap)}, {ratio(cheap)}" if cheap else "none"
                lines.append(f"| {s['model']} | {e:g} | {100 * mine.accuracy:.1f} % ({name(mine)}, {mine.n} images) | "
                             f"{100 * alpha.accuracy:.1f} % | {ratio(mine)} | {enough} | {gain} |")
            else:
                lines.append(f"| {s['model']} | {e:g} | - | - | - | - | {gain} |")
    return lines + [""]


def write_markdown(path: Path, rows: Sequence[Row], summaries: Sequence[dict]) -> None:
    """Tables per model (certified accuracy % and time per image at each radius)."""
    commands = sorted({s["command"] for s in summaries})
    lines = ["# Zoo benchmark: Lipschitz certification vs bound propagation on certifiably trained models", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands) + ". First 200 Fashion-MNIST test images, L2, "
             "pixels in [0, 1], one torch thread; times are comparable within a model (machine and load per "
             "model below).", ""]
    lines += training_table(summaries) + targets(rows, summaries)
    for s in summaries:
        model_rows = [r for r in rows if r.model == s["model"]]
        lines += [f"## {s['model']} ({s['arch']}; trained with {s['training']})", "",
                  f"Clean accuracy {100 * s['clean']:.1f} %; median certified radius ({s['best']}) "
                  f"{s['median_radius']:.3f}; soundness violations against PGD: {s['soundness_violations']}.", "",
                  f"Machine: {s.get('machine', 'not recorded (run before the machine line was kept)')}.", "",
                  "| method | images | " + " | ".join(f"eps {e:g}" for e in s["grid"]) + " | ms per image and radius |",
                  "|---|---:|" + "---:|" * (len(s["grid"]) + 1)]
        for method in dict.fromkeys(r.method for r in model_rows):
            cells = {r.eps: r for r in model_rows if r.method == method}
            first = next(iter(cells.values()))
            once = method.startswith("lipcert")  # one bound and one pass give every radius
            per_image = 1000 * (first.seconds if once else np.mean([r.seconds for r in cells.values()])) / first.n
            lines.append(f"| {method} | {first.n} | " + " | ".join(
                f"{100 * cells[e].accuracy:.1f} %" if e in cells else "-" for e in s["grid"]) + f" | {per_image:.3g} |")
        lines.append("")
    if FINDINGS.exists():  # written by hand after a run; kept when the tables are rebuilt
        lines += ["", FINDINGS.read_text().rstrip()]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: Sequence[Row], summaries: Sequence[dict]) -> None:
    """Certified accuracy vs radius, one panel per model, one colour per method across panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method.split(" (")[0] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    cols = 4
    nrows = -(-len(summaries) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.3 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, summaries):
        model_rows = [r for r in rows if r.model == s["model"]]
        for method in dict.fromkeys(r.method for r in model_rows):
            pts = sorted((r.eps, 100 * r.accuracy) for r in model_rows if r.method == method)
            n = next(r.n for r in model_rows if r.method == method)
            ax.plot(*zip(*pts), marker="o", ms=3, color=colors[method.split(" (")[0]],
                    linestyle="--" if "PGD" in method or "(" in method else "-", label=f"{method} [n={n}]")
        ax.set_title(s["model"], fontsize=9)
        ax.set_xlabel("L2 radius", fontsize=8)
        ax.set_ylabel("certified accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(summaries):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--models", nargs="*", type=Path, default=None, help="default: the whole zoo")
    p.add_argument("--methods", nargs="+", default=list(LIPSCHITZ_METHODS), help="lipcert bound methods")
    p.add_argument("--no-local", dest="local", action="store_false", help="skip lipcert.certify(..., local=True)")
    p.add_argument("--local-n", type=int, default=None, help="local=True on the first N images only (default: all)")
    p.add_argument("--optimized-seconds", type=float, default=None,
                   help="wall-time budget of method optimized (full vector and margin pairs; default: none)")
    p.add_argument("--alpha-n", type=int, default=25, help="images for alpha-CROWN (0: skip it)")
    p.add_argument("--lirpa-n", type=int, default=200, help="images for IBP, CROWN and Lipschitz-first")
    p.add_argument("--lirpa-batch", type=int, default=25)
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--pgd-restarts", type=int, default=3)
    p.add_argument("--raw", type=Path, default=RAW_DIR, help="folder of the per-model result files")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from --raw")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "zoo.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report_only:
        x, y = datasets.load("fashion-mnist", "test", args.data_dir, limit=args.n, download=False)
        for path in args.models or zoo_models():
            rows, summary = bench_model(path, np.asarray(x, dtype=np.float64), np.asarray(y), args)
            summary["command"] = "python benchmarks/zoo/bench.py " + " ".join(argv)
            summary["machine"] = machine(f"after {path.stem}")
            args.raw.mkdir(parents=True, exist_ok=True)
            (args.raw / f"{path.stem}.json").write_text(
                json.dumps({"summary": summary, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    results = [json.loads(f.read_text()) for f in sorted(args.raw.glob("*.json"))]
    rows = [Row(**r) for res in results for r in res["rows"]]
    summaries = sorted((res["summary"] for res in results), key=lambda s: (ARCH_ORDER.index(s["arch"]), s["model"]))
    write_markdown(args.out, rows, summaries)
    plot(args.out.with_suffix(".png"), rows, summaries)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
