"""Speed and peak memory of the closed-form bounds against this machine's matrix-multiply speed.

Run (full grid, about 15 min on an idle 2-core machine; largest net 2000 x 100, 3.2 GB of weights):

    python benchmarks/speed.py

Quick check (about 1 min idle):

    python benchmarks/speed.py --quick --out /tmp/speed.md

Three parts:

1. Gaussian nets W ~ N(0, 1/fan_in), input = width, one output, for every width x depth of the
   grid: wall time and peak memory of each method, beside the time of one float64 n x n matrix
   product measured in the same run.  The flop-rate ratio of a closed-form pass is
   (4 n^3 per hidden layer: triangular solve n^3, symmetric product n^3 to 2 n^3, Cholesky
   n^3/3, lambda_max) / time, divided by the product's 2 n^3 / time; combined is given as a
   multiple of ECLipsE-Fast's time.
2. ECLipsE (SDP) and LipSDP-Neuron on small nets, against ECLipsE-Fast and combined on the same
   net (speed-up and value ratio).
3. The shared CNN models: parse, load + materialize the dense matrices, bound (combined) and
   certify (L2) times, with peak memory as a multiple of the largest dense weight matrix.

Peak memory is the high-water mark of the process's resident memory during the call minus the
resident memory before it (Linux ``/proc/self/clear_refs`` resets the mark).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lipcert
from lipcert.errors import LipcertError
from lipcert.random_nets import gaussian

from run_info import REPO, SHARED_DATA, machine

RULES = ("eclipse-fast", "gc", "shift", "gcs")
FLOPS_PER_LAYER = 4  # x n^3 per hidden layer and pass (issue 7's cost model)
CNN_MODELS = (
    ("mnist_cnn_a_adv", "models/mnist_cnn_a_adv/mnist_a_adv.onnx", "mnist", [0.0], [1.0]),
    ("cifar_conv_small_pgd", "models/eran_cifar_conv_small_pgd/cifar_conv_small_pgd.onnx", "cifar10",
     [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.201]),
    ("oval21 cifar_base_kw", "models/oval21_cifar_base_kw/cifar_base_kw.onnx", "cifar10",
     [0.485, 0.456, 0.406], [0.225, 0.225, 0.225]),
)


@dataclass
class Measured:
    """Result, best wall time (s) and peak extra resident memory (bytes, None if unknown) of a call."""

    value: Any
    seconds: float
    peak: int | None


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(fn: Callable[[], Any], repeat: int = 1) -> Measured:
    """Best of ``repeat`` wall times of ``fn()`` and its peak extra resident memory."""
    best, value, peak = math.inf, None, None
    for _ in range(repeat):
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the resident high-water mark
            base = _status_kb("VmRSS")
        except OSError:
            base = None
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
        top = _status_kb("VmHWM")
        if base is not None and top is not None:
            peak = max(peak or 0, (top - base) * 1024)
    return Measured(value, best, peak)


def best_of(fn: Callable[[], Any], repeat: int) -> Measured:
    """Best wall time of ``repeat`` back-to-back calls (no memory probe: for millisecond calls)."""
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return Measured(value, min(times), None)


def matmul_seconds(n: int) -> float:
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, n, dtype=torch.float64)
    a @ b
    return measure(lambda: a @ b, repeat=5 if n <= 1000 else 3).seconds


def gaussian_part(widths: list[int], depths: list[int], deep_widths: list[int], methods: list[str],
                  deep_methods: list[str], budget: float) -> list[dict[str, Any]]:
    rows = []
    for depth in depths:
        for width in widths:
            if depth >= 100 and width not in deep_widths:
                continue
            net = gaussian([width] * depth + [1], seed=0)
            mm = matmul_seconds(width)
            row: dict[str, Any] = {"width": width, "depth": depth, "matmul_s": mm, "methods": {}}
            for method in (deep_methods if depth >= 100 and width == max(deep_widths) else methods):
                # cheap runs: best of 3; a run longer than the budget is not repeated
                first = measure(lambda m=method: lipcert.lipschitz(net, m))
                m = first if first.seconds > budget else min(
                    (first, measure(lambda m=method: lipcert.lipschitz(net, m), repeat=2)), key=lambda x: x.seconds)
                bound = m.value
                row["methods"][method] = {"value": bound.value, "seconds": m.seconds, "peak": m.peak,
                                          "rule": bound.rule, "pruned": sorted(bound.extras.get("pruned", {}))}
                print(f"  w={width} d={depth} {method}: {bound.value:.5g} in {m.seconds:.3g} s "
                      f"(matmul {mm * 1e3:.3g} ms), peak {_mb(m.peak)}", flush=True)
            rows.append(row)
            del net
    return rows


def breakdown_part(widths: list[int]) -> list[dict[str, Any]]:
    """Time of each operation of one ECLipsE-Fast layer, in units of one n x n float64 product."""
    from lipcert.bounds.eigen import top_eigenvalue
    from lipcert.bounds.recursion import gram

    rows = []
    for n in widths:
        torch.manual_seed(0)
        w = torch.randn(n, n, dtype=torch.float64) / math.sqrt(n)
        low = torch.linalg.cholesky(w @ w.T + torch.eye(n, dtype=torch.float64))
        y = torch.linalg.solve_triangular(low, w.T, upper=False)
        g = gram(y)
        g /= float(g.diagonal().max())
        mm = matmul_seconds(n)
        ops = {
            "triangular solve": lambda: torch.linalg.solve_triangular(low, w.T, upper=False),
            "Gram (block syrk)": lambda: gram(y),
            "Gram (full product)": lambda: y.T @ y,
            "Cholesky": lambda: torch.linalg.cholesky_ex(g + torch.eye(n, dtype=torch.float64)),
            "lambda_max (Lanczos)": lambda: top_eigenvalue(lambda v: g @ v, n, dtype=g.dtype, device=g.device,
                                                           dense=g),
            "eigvalsh (dense)": lambda: torch.linalg.eigvalsh(g),
        }
        row = {"width": n, "matmul_s": mm, "ops": {k: measure(f, repeat=3).seconds for k, f in ops.items()}}
        rows.append(row)
        print(f"  n={n}: " + ", ".join(f"{k} {v / mm:.2f}" for k, v in row["ops"].items()) + " matmuls", flush=True)
    return rows


def float32_part(widths: list[int], depth: int) -> list[dict[str, Any]]:
    """float32 mode (search in float32, best certificate replayed in float64) against float64."""
    rows = []
    for width in widths:
        net = gaussian([width] * depth + [1], seed=0)
        row: dict[str, Any] = {"width": width, "depth": depth}
        for method in ("eclipse-fast", "combined"):
            for dtype in (torch.float64, torch.float32):
                m = measure(lambda mm=method, dt=dtype: lipcert.lipschitz(net, mm, dtype=dt), repeat=2)
                row[f"{method} {str(dtype)[6:]}"] = {"seconds": m.seconds, "value": m.value.value}
        rows.append(row)
        print(f"  float32 w={width} d={depth}: " + ", ".join(f"{k} {v['seconds']:.3g} s" for k, v in row.items()
                                                           if isinstance(v, dict)), flush=True)
    return rows


def sdp_part(configs: list[tuple[int, int]], sdp_methods: list[str], lipsdp_max: int) -> list[dict[str, Any]]:
    rows = []
    for width, depth in configs:
        net = gaussian([width] * depth + [1], seed=0)
        # Milliseconds on these small nets: best of 20 plain runs (measure()'s gc.collect and memory probes
        # before each run made a 0.18 ms call take 1 ms).
        fast = best_of(lambda: lipcert.lipschitz(net, "eclipse-fast"), 20)
        comb = best_of(lambda: lipcert.lipschitz(net, "combined"), 20)
        for method in sdp_methods:
            if method.startswith("lipsdp") and width * (depth - 1) > lipsdp_max:
                continue
            try:
                m = measure(lambda mm=method: lipcert.lipschitz(net, mm))
            except LipcertError as exc:  # missing extra, problem too large
                print(f"  {method} {width}x{depth}: {exc}", flush=True)
                continue
            rows.append({"width": width, "depth": depth, "method": method, "value": m.value.value,
                         "seconds": m.seconds, "fast": fast.value.value, "fast_s": fast.seconds,
                         "combined": comb.value.value, "combined_s": comb.seconds})
            print(f"  {method} {width}x{depth}: {m.value.value:.5g} in {m.seconds:.3g} s; Fast "
                  f"{fast.value.value:.5g} in {fast.seconds:.3g} s", flush=True)
    return rows


def cnn_part(data: Path, images: int) -> list[dict[str, Any]]:
    from lipcert import datasets
    from lipcert.adapters.onnx import analyze_onnx

    rows = []
    for name, rel, dataset, mean, std in CNN_MODELS:
        path = data / rel
        if not path.exists():
            print(f"  {name}: {path} missing, skipped", flush=True)
            continue
        parse = measure(lambda p=path: analyze_onnx(p))
        loaded = measure(lambda p=path, m=mean, s=std: lipcert.load(p, mean=m, std=s, check=False))
        net = loaded.value
        largest = max(w.numel() * w.element_size() for w in net.weights)
        square = 8 * max(w.shape[0] for w in net.weights[:-1]) ** 2  # the largest n_k x n_k (Gamma, M, factors)
        bound = measure(lambda: lipcert.lipschitz(net, "combined"))
        fast = measure(lambda: lipcert.lipschitz(net, "eclipse-fast"))
        ds = datasets.load(dataset, root=data / "datasets", download=False)
        n = min(images, len(ds.y))
        x = ds.x[:n].reshape(n, *net.input_shape)
        cert = measure(lambda: lipcert.certify(net, x, ds.y[:n], norm=2, bound=bound.value))
        rows.append({"model": name, "widths": list(net.widths), "largest": largest, "square": square,
                     "parse_s": parse.seconds, "parse_peak": parse.peak,
                     "load_s": loaded.seconds, "load_peak": loaded.peak,
                     "fast_s": fast.seconds, "fast_peak": fast.peak, "fast": fast.value.value,
                     "bound_s": bound.seconds, "bound_peak": bound.peak, "bound": bound.value.value,
                     "certify_s": cert.seconds, "certify_peak": cert.peak, "images": n,
                     "median_radius": cert.value.radius_stats()["median"]})
        print(f"  {name}: widths {list(net.widths)}, load {loaded.seconds:.3g} s (peak {_mb(loaded.peak)}), "
              f"combined {bound.value.value:.4g} in {bound.seconds:.3g} s (peak {_mb(bound.peak)})", flush=True)
        del net
    return rows


def _mb(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.0f} MB"


def _ratio(flops_n3: float, n: int, seconds: float, matmul_s: float) -> float:
    return (flops_n3 * n**3 / seconds) / (2 * n**3 / matmul_s)


def markdown(gauss: list[dict[str, Any]], parts: list[dict[str, Any]], sdp: list[dict[str, Any]],
             cnn: list[dict[str, Any]], f32: list[dict[str, Any]], command: str, note: str) -> str:
    methods = list(dict.fromkeys(m for row in gauss for m in row["methods"]))
    lines = ["# Speed and memory of the closed-form bounds", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"Command: `{command}`  ",
              f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
              "## Gaussian nets (width x depth = number of weight matrices, one output)", "",
              "Each cell: wall time, then in brackets the flop-rate ratio to the float64 matrix product of the "
              f"same size (model: {FLOPS_PER_LAYER} n^3 flops per hidden layer and pass; naive: time only) "
              "and the peak extra resident memory.  `combined / Fast` is the time ratio.", "",
              "| width | depth | matmul | " + " | ".join(methods) + " | combined / Fast | combined pruned |",
              "|---" * (len(methods) + 5) + "|"]
    for row in gauss:
        n, layers, mm = row["width"], row["depth"] - 1, row["matmul_s"]
        cells = []
        for m in methods:
            r = row["methods"].get(m)
            if r is None:
                cells.append("–")
                continue
            rate = "" if m in ("naive", "combined", "greedy") else \
                f"{100 * _ratio(FLOPS_PER_LAYER * layers, n, r['seconds'], mm):.0f}%, "
            cells.append(f"{r['seconds']:.3g} s ({rate}{_mb(r['peak'])})")
        res = row["methods"]
        ratio = (f"{res['combined']['seconds'] / res['eclipse-fast']['seconds']:.2f}x"
                 if "combined" in res and "eclipse-fast" in res else "–")
        pruned = ", ".join(res["combined"]["pruned"]) if "combined" in res else "–"
        lines.append(f"| {n} | {row['depth']} | {mm * 1e3:.3g} ms | " + " | ".join(cells)
                     + f" | {ratio} | {pruned or 'none'} |")
    if parts:
        names = list(parts[0]["ops"])
        lines += ["", "## Where one ECLipsE-Fast layer spends its time", "",
                  "Each operation on an n x n matrix, in units of one n x n float64 matrix product "
                  "(a layer needs one solve, one Gram, one Cholesky and one lambda_max).", "",
                  "| width | matmul | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
        for r in parts:
            lines.append(f"| {r['width']} | {r['matmul_s'] * 1e3:.3g} ms | "
                         + " | ".join(f"{r['ops'][k] / r['matmul_s']:.2f}" for k in names) + " |")
    if sdp:
        lines += ["", "## SDP methods against the closed forms (same net)", "",
                  "| net | SDP method | value | time | ECLipsE-Fast value | Fast time | speed-up vs Fast | "
                  "combined value | combined time | speed-up vs combined |", "|---" * 10 + "|"]
        for r in sdp:
            lines.append(f"| {r['width']}x{r['depth']} | {r['method']} | {r['value']:.5g} | {r['seconds']:.3g} s | "
                         f"{r['fast']:.5g} | {r['fast_s'] * 1e3:.3g} ms | {r['seconds'] / r['fast_s']:.0f}x | "
                         f"{r['combined']:.5g} | {r['combined_s'] * 1e3:.3g} ms | "
                         f"{r['seconds'] / r['combined_s']:.0f}x |")
    if cnn:
        lines += ["", "## CNN models (dense matrices of the convolutions)", "",
                  "Peak extra memory of loading as a multiple of the largest dense weight matrix W, of the "
                  "bounds as a multiple of the largest n_k x n_k float64 matrix (Gamma_k, M_k and their factors).", "",
                  "| model | widths | largest W | largest n_k^2 | parse | load + materialize (peak) | "
                  "ECLipsE-Fast (peak) | combined (peak) | certify L2 (images, peak) | combined bound | "
                  "median certified radius |", "|---" * 11 + "|"]
        for r in cnn:
            def cell(s: float, peak: int | None, unit: int) -> str:
                mult = "" if peak is None else f", {peak / unit:.1f}x"
                return f"{s:.3g} s ({_mb(peak)}{mult})"

            lines.append(f"| {r['model']} | {'-'.join(map(str, r['widths']))} | {_mb(r['largest'])} | "
                         f"{_mb(r['square'])} | {r['parse_s']:.3g} s | "
                         f"{cell(r['load_s'], r['load_peak'], r['largest'])} | "
                         f"{cell(r['fast_s'], r['fast_peak'], r['square'])} | "
                         f"{cell(r['bound_s'], r['bound_peak'], r['square'])} | "
                         f"{r['certify_s']:.3g} s ({r['images']}, {_mb(r['certify_peak'])}) | {r['bound']:.4g} | "
                         f"{r['median_radius']:.3g} |")
    if f32:
        keys = [k for k in f32[0] if isinstance(f32[0][k], dict)]
        lines += ["", "## float32 mode on this CPU", "",
                  "`dtype=torch.float32`: the recursion and every rule run in float32, then the best pass's "
                  "multipliers are replayed in float64 (docs/decisions.md item 11(c)).  Each cell: time, then the value "
                  "relative to the float64 run of the same method.", "",
                  "| width | depth | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for r in f32:
            cells = []
            for k in keys:
                ref = r[k.replace("float32", "float64")]["value"]
                cells.append(f"{r[k]['seconds']:.3g} s ({r[k]['value'] / ref:.6f})")
            lines.append(f"| {r['width']} | {r['depth']} | " + " | ".join(cells) + " |")
    lines += ["", "## Notes", "",
              "- combined runs its nine passes together (shared first layer and trajectories) and, on nets with a "
              "hidden layer >= 256 wide, prunes passes whose truncated bound is > 1.2x the best or whose M_k is "
              "dominated (never SN(1), never at the last hidden layer; docs/decisions.md item 11); the pruned passes "
              "are listed per row.  Its target is <= 3x ECLipsE-Fast at width >= 500.",
              "- Peak memory of a closed-form pass is a few n_k x n_k float64 matrices (Gamma_k, the Cholesky "
              "factor, the margin matrix) on top of the weights; combined keeps one factor per surviving pass.",
              "- lambda_max in the rules is a torch Lanczos estimate (feasibility is decided by the Cholesky "
              "test); no scipy/OpenBLAS thread pool runs beside torch's threads.", ""]
    return "\n".join(lines)


def plot(gauss: list[dict[str, Any]], path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in gauss})
    methods = list(dict.fromkeys(m for row in gauss for m in row["methods"]))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = dict(zip(depths, ("-", "--", ":")))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for depth in depths:
        rows = [r for r in gauss if r["depth"] == depth]
        widths = [r["width"] for r in rows]
        per_layer = [r["matmul_s"] * 1e3 for r in rows]
        axes[0].plot(widths, per_layer, "k" + styles[depth], marker="x",
                     label="float64 n x n matmul" if depth == depths[0] else None)
        for m in methods:
            pts = [(r["width"], r["methods"][m]) for r in rows if m in r["methods"]]
            if not pts:
                continue
            w = [p[0] for p in pts]
            axes[0].plot(w, [p[1]["seconds"] / (depth - 1) * 1e3 for p in pts], styles[depth], color=colors[m],
                         marker="o", label=m if depth == depths[0] else None)
            if m not in ("naive", "combined", "greedy"):
                mm = {r["width"]: r["matmul_s"] for r in rows}
                axes[1].plot(w, [100 * _ratio(FLOPS_PER_LAYER * (depth - 1), x, p["seconds"], mm[x]) for x, p in pts],
                             styles[depth], color=colors[m], marker="o", label=m if depth == depths[0] else None)
            peaks = [(x, p["peak"]) for x, p in pts if p["peak"]]
            if peaks:
                axes[2].plot([x for x, _ in peaks], [pk / (8 * x * x) for x, pk in peaks], styles[depth],
                             color=colors[m], marker="o", label=m if depth == depths[0] else None)
    axes[0].set(xscale="log", yscale="log", xlabel="width n", ylabel="ms per hidden layer",
                title="time per hidden layer (line style = depth)")
    axes[1].set(xscale="log", xlabel="width n", ylabel="% of float64 matmul flop rate",
                title=f"flop-rate ratio ({FLOPS_PER_LAYER} n^3 per layer)")
    axes[1].axhline(50, color="grey", lw=0.8)
    axes[2].set(xscale="log", xlabel="width n", ylabel="peak extra memory / (8 n^2 bytes)",
                title="peak memory in n x n float64 matrices")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    styles_note = ", ".join(f"depth {d}: '{s}'" for d, s in styles.items())
    title = f"lipcert closed-form bounds on Gaussian nets ({styles_note})"
    fig.suptitle(title + ("\n" + textwrap.fill(note, 190) if note else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _pairs(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (t.split("x") for t in text.split(",") if t)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=_ints, default=[100, 200, 500, 1000, 2000])
    p.add_argument("--depths", type=_ints, default=[10, 50, 100])
    p.add_argument("--deep-widths", type=_ints, default=[100, 500, 2000],
                   help="widths run at depth >= 100 (the largest only with --deep-methods)")
    p.add_argument("--methods", default="naive,eclipse-fast,gc,shift,gcs,combined")
    p.add_argument("--deep-methods", default="eclipse-fast,combined",
                   help="methods at depth >= 100 for the largest deep width (the no-OOM check)")
    p.add_argument("--sdp", type=_pairs, default=[(20, 2), (20, 5), (50, 2), (50, 5)],
                   help="width x depth nets for the SDP comparison, e.g. 20x5,50x2 (empty: skip)")
    p.add_argument("--sdp-methods", default="eclipse,lipsdp-neuron")
    p.add_argument("--lipsdp-max-neurons", type=int, default=150,
                   help="run LipSDP only on nets with at most this many hidden neurons (one SDP over all of them)")
    p.add_argument("--no-cnn", action="store_true", help="skip the CNN models")
    p.add_argument("--images", type=int, default=1000, help="test images certified per CNN model")
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--repeat-below", type=float, default=2.0,
                   help="repeat a method (best of 3) when one run takes less than this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="small grid: widths 100,200,500, depths 10,50, deep width 100, SDP 20x2, 100 images")
    p.add_argument("--note", default="", help="a line printed at the top of the report (e.g. machine state)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "speed.md")
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.depths, args.deep_widths = [100, 200, 500], [10, 50, 100], [100]
        args.sdp, args.images = [(20, 2)], 100
    if args.threads:
        torch.set_num_threads(args.threads)
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/speed.py " + " ".join(shlex.quote(a) for a in given)
    print("Gaussian nets", flush=True)
    gauss = gaussian_part(args.widths, args.depths, args.deep_widths, args.methods.split(","),
                          args.deep_methods.split(","), args.repeat_below)
    print("Operations of one layer", flush=True)
    parts = breakdown_part(args.widths)
    print("SDP comparison", flush=True)
    sdp = sdp_part(args.sdp, [m for m in args.sdp_methods.split(",") if m], args.lipsdp_max_neurons)
    cnn = [] if args.no_cnn else (print("CNN models", flush=True), cnn_part(args.data, args.images))[1]
    print("float32 mode", flush=True)
    f32 = float32_part([w for w in args.widths if w >= 500], depth=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"gaussian": gauss, "operations": parts, "sdp": sdp,
                                                         "cnn": cnn, "float32": f32}, indent=1))
    args.out.write_text(markdown(gauss, parts, sdp, cnn, f32, command.strip(), args.note))
    plot(gauss, args.out.with_suffix(".png"), args.note)
    print(f"wrote {args.out}, {args.out.with_suffix('.json').name} and {args.out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
