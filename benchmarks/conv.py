"""Scale targets of conv nets without dense matrices (issue 18, part 5): time, peak memory, certified accuracy.

Run:  python benchmarks/conv.py convlarge [--seed 0] [--budget-gb 2]
      python benchmarks/conv.py models [--n 200]
      (each appends a section to --out, default benchmarks/results/conv.md; a trained model side by side
      with alpha-CROWN and its trainer's claim: benchmarks/conv_trained.py)

Every case runs in a fresh subprocess: ``peak MB`` is ru_maxrss of that process (it includes
python + torch + lipcert, about 220-300 MB here), ``bound peak MB`` the growth of resident memory
during the bound alone (:class:`lipcert.memory.PeakMemory`).

* ``convlarge``: SDP-CROWN's CIFAR ConvLarge (conv 3->32 3x3 p1, 32->32 4x4 s2 p1, 32->64 3x3 p1,
  64->64 4x4 s2 p1, fc 4096->512->512->10, ReLU) as a torch module with He-normal weights
  N(0, 2 / fan_in) (the scale at which ReLU nets are trained and stay), loaded by ``lipcert.load``
  (convolutions kept as operators, the default) and bounded under a memory budget of
  ``--budget-gb``: each method picks the dense path if its estimate fits, else the matrix-free one.
* ``models``: every conv model of benchmarks/zoo/models and ../shared/data, loaded dense
  (``dense=True``, the behaviour before operator layers) and by default, bounded by naive and
  combined (default budget: the dense path where it fits), and naive forced onto the matrix-free
  path by a budget between its two estimates; certified accuracy on the first ``--n`` test images
  at the zoo's radii (L2, raw [0, 1] pixels).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from run_info import REPO, SHARED_DATA, machine, peak_mb, run_child

EPS = {"mnist": (0.5, 1.0, 1.58), "fashion-mnist": (0.5, 1.0, 1.58), "cifar10": (36 / 255, 72 / 255, 108 / 255)}
"""The zoo's report radii (benchmarks/zoo/train.py REPORT_EPS)."""
ZOO = REPO / "benchmarks" / "zoo" / "models"
MODELS = [
    (str(ZOO / "fmnist-conv-small-power.onnx"), "fashion-mnist", None, None),
    (str(ZOO / "fmnist-conv-small-lipcert.onnx"), "fashion-mnist", None, None),
    (str(ZOO / "fmnist-conv-deep-power.onnx"), "fashion-mnist", None, None),
    (str(ZOO / "fmnist-conv-deep-lipcert.onnx"), "fashion-mnist", None, None),
    (str(SHARED_DATA / "models/mnist_cnn_a_adv/mnist_a_adv.onnx"), "mnist", None, None),
    (str(SHARED_DATA / "models/eran_cifar_conv_small_pgd/cifar_conv_small_pgd.onnx"), "cifar10",
     [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.201]),
    (str(SHARED_DATA / "models/oval21_cifar_base_kw/cifar_base_kw.onnx"), "cifar10",
     [0.485, 0.456, 0.406], [0.225, 0.225, 0.225]),
]


def conv_large(seed: int) -> torch.nn.Sequential:
    """ConvLarge for 3 x 32 x 32 inputs, He-normal weights, biases N(0, 0.01^2)."""
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 4, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4096, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.normal_(m.bias, std=0.01)
    return model.eval()


def bound_row(net: Any, method: str, max_bytes: float | None) -> dict[str, Any]:
    import lipcert
    from lipcert.memory import PeakMemory

    try:
        with PeakMemory() as memory:
            b = lipcert.lipschitz(net, method, max_bytes=max_bytes)
    except lipcert.LipcertError as exc:
        return {"method": method, "error": f"{type(exc).__name__}: {exc}"}
    return {"method": method, "value": b.value, "seconds": b.seconds, "path": b.extras.get("path", "dense"),
            "bound_peak_mb": memory.peak_bytes / 1e6, "bound": b}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import lipcert
    import lipcert.datasets
    from lipcert.bounds.methods import resolve
    from lipcert.bounds.workspace import matrix_free_bytes, method_bytes

    start = time.perf_counter()
    if spec["kind"] == "convlarge":
        net = lipcert.load(conv_large(spec["seed"]), input_shape=(3, 32, 32))
    else:
        net = lipcert.load(spec["model"], mean=spec["mean"], std=spec["std"], dense=spec["mode"] == "dense")
    out: dict[str, Any] = {**spec, "load_s": time.perf_counter() - start, "widths": list(net.widths),
                           "operators": sum(op is not None for op in net.operators), "dense_gb": net.dense_nbytes / 1e9}
    budget = spec.get("budget")
    rows = []
    for method in spec["methods"]:
        if spec["mode"] == "matrix-free":  # a budget the matrix-free estimate fits and the dense one does not
            free, dense = matrix_free_bytes(net), method_bytes(net, method, resolve(method).options)
            budget = (free + dense) / 2 if free < dense else None
        rows.append(bound_row(net, method, budget))
    if spec.get("n"):
        x, y = lipcert.datasets.load(spec["dataset"], split="test", root=SHARED_DATA / "datasets", limit=spec["n"])
        bounds = [r.pop("bound") for r in rows if "bound" in r]
        t0 = time.perf_counter()
        cert = lipcert.certify(net, x, y, bound=bounds, progress=False)
        out["certify_s"] = time.perf_counter() - t0
        out["clean"] = float(cert.clean_accuracy)
        eps = list(EPS[spec["dataset"]])
        out["certified"] = {m: [float(a) for a in cert.certified_accuracy(eps, m)] for m in cert.methods}
    for r in rows:
        r.pop("bound", None)
    out["bounds"] = rows
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_mb()
    return out


def _fmt(r: dict[str, Any]) -> list[str]:
    name = Path(r["model"]).name if "model" in r else "ConvLarge (CIFAR, random He-normal)"
    if "failed" in r:
        return [f"| {name} | {r['mode']} | failed: {r['failed']} |"]
    lines = []
    for b in r["bounds"]:
        if "error" in b:
            cell = f"refused: {b['error'][:200]}"
            lines.append(f"| {name} | {r['mode']} | {b['method']} | - | {cell} | - | - | {r['peak_mb']:.0f} |")
            continue
        cert = r.get("certified", {}).get(b["method"])
        acc = "" if cert is None else " / ".join(f"{a:.3f}" for a in cert)
        lines.append(f"| {name} | {r['mode']} | {b['method']} | {b['path']} | {b['value']:.6g} | {b['seconds']:.2f} | "
                     f"{b['bound_peak_mb']:.0f} | {r['peak_mb']:.0f} | {acc} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("convlarge", "models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv.md")
    parser.add_argument("--modes", default="dense,default,matrix-free",
                        help="loads to compare (models): dense, default, matrix-free")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]])
    start_line = machine("at the start")
    specs: list[dict[str, Any]] = []
    if args.what == "convlarge":
        specs = [{"kind": "convlarge", "mode": "default", "seed": args.seed, "budget": args.budget_gb * 1e9,
                  "methods": ["naive", "eclipse-fast", "combined"]}]
    else:
        for model, dataset, mean, std in MODELS:
            for mode in args.modes.split(","):
                methods = ["naive"] if mode == "matrix-free" else ["naive", "combined"]
                specs.append({"kind": "model", "model": model, "dataset": dataset, "mean": mean, "std": std,
                              "mode": mode, "methods": methods, "n": args.n})
    rows, results = [], []
    for spec in specs:
        r = run_child(__file__, spec)
        results.append(r)
        rows += _fmt(r)
        print("\n".join(_fmt(r)), f"(load {r.get('load_s', 0):.1f} s, total {r.get('seconds', 0):.1f} s)", flush=True)
    eps = EPS["cifar10"] if args.what == "convlarge" else None
    title = {"convlarge": f"ConvLarge (CIFAR-10 shape, random weights) under a {args.budget_gb:g} GB budget",
             "models": "Conv models of the zoo and of ../shared/data: dense vs default vs matrix-free"}[args.what]
    extra = [f"- {Path(r.get('model', 'ConvLarge')).name} ({r['mode']}): widths {r.get('widths')}, "
             f"{r.get('operators', 0)} operator layers, dense form {r.get('dense_gb', 0):.3g} GB, load "
             f"{r.get('load_s', 0):.1f} s, process total {r.get('seconds', 0):.1f} s"
             + (f", clean accuracy {r['clean']:.3f} on {r['n']}" if "clean" in r else "") for r in results
             if "failed" not in r]
    text = "\n".join([
        "", f"## {title}", "", f"Command: `{command}` (seed {args.seed}).", "", start_line + ".", machine() + ".", "",
        "peak MB: ru_maxrss of the process (python + torch + lipcert included); bound peak MB: growth during that "
        "bound. certified accuracy at the radii " + (", ".join(f"{e:.4g}" for e in eps) if eps else
                                                     "0.5 / 1 / 1.58 (MNIST, Fashion-MNIST) and 36 / 72 / 108 "
                                                     "/255 (CIFAR-10)") + f" on the first {args.n} test images.",
        "",
        "| model | load | method | path | bound | seconds | bound peak MB | peak MB | certified accuracy |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "", *extra, ""])
    with args.out.open("a", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
