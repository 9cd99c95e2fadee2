"""Local (per-input) Lipschitz certification against the global bound, CROWN and alpha-CROWN (L2).

Run:  python benchmarks/local.py [--data ../shared/data] [--out benchmarks/results/local.md]
      [--models 6_100,256x2,...] [--n-mlp 100] [--n-cnn 20] [--n-alpha 20]

For every ONNX model of the shared data folder: on the first n test images, certified accuracy
at the L2 radii of the table with the global combined bound, with local constants
(``lipcert.certify(..., local=True)``), with CROWN and alpha-CROWN from auto_LiRPA (through
``lipcert.adapters.lirpa``, on the same float64 function, margin specification, no input
clipping), and the PGD upper bound; the time per input of each; and the soundness check (inputs
certified locally yet broken by PGD, must be 0).  Results are appended model by model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert import datasets
from lipcert.attacks import soundness_violations
from lipcert.bounds.rules import Rule
from lipcert.local import LOCAL_DAMPINGS, LOCAL_METHOD, LOCAL_RULES, local_radii

from run_info import SHARED_DATA, load_average, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify import MODELS, eps_text  # noqa: E402  (the model list of the certify benchmark)

EPS = {"mnist": (0.1, 0.2, 0.3, 0.5), "cifar10": (6 / 255, 12 / 255, 24 / 255, 36 / 255)}
"""L2 radii: the standard 0.5 (MNIST) and 36/255 (CIFAR-10) of the certify benchmark, where global
bounds certify nothing on these normally trained models, and smaller radii where methods separate
(0.3 and 24/255 are SDP-CROWN's Table 1 radii)."""
CNN_RULES = (Rule("gcs", 1.0),)
"""One rule on the convolutional models: their free layers have thousands of neurons, each rule
costs a dense Cholesky of that size per local bound."""


def load_lirpa():
    try:
        from lipcert.adapters import lirpa
    except ImportError as exc:  # the adapter is another task's; the table says when it is missing
        print(f"auto_LiRPA adapter not available: {exc}", file=sys.stderr)
        return None
    return lirpa


def bench(model, root: Path, n: int, n_alpha: int, lirpa, steps: int, restarts: int, rules,
          n_crown_intervals: int = 0) -> dict:
    net = lipcert.load(root / "models" / model.path, mean=model.mean, std=model.std)
    data = datasets.load(model.dataset, root=root / "datasets", limit=n, download=False)
    x = data.x.reshape(len(data.y), *net.input_shape).astype(np.float64)
    y = data.y
    eps = EPS[model.dataset]
    print(f"{model.path}: {net}, n={len(y)}, rules {[r.name for r in rules]}", flush=True)
    bound = lipcert.lipschitz(net, "combined")
    start = time.perf_counter()
    cert = lipcert.certify(net, x, y, norm=2, bound=bound)
    global_s = (time.perf_counter() - start + bound.seconds) / len(y)
    start = time.perf_counter()
    lcert = lipcert.certify(net, x, y, norm=2, bound=bound, local=rules)
    local_s = (time.perf_counter() - start) / len(y)
    out = {"model": model, "net": net, "n": len(y), "clean": cert.clean_accuracy, "eps": eps,
           "global": cert.certified_accuracy(eps, "combined"), "local": lcert.certified_accuracy(eps, LOCAL_METHOD),
           "global_median": cert.radius_stats("combined")["median"],
           "local_median": lcert.radius_stats(LOCAL_METHOD)["median"], "global_s": global_s, "local_s": local_s,
           "bound": bound.value, "upper": [], "violations": 0}
    print(f"  global {out['global']}, local {out['local']} ({local_s:.2f} s/input)", flush=True)
    out["local+crown"] = None
    count = min(n_crown_intervals, len(y)) if lirpa is not None else 0
    if count:  # option (b): CROWN pre-activation bounds intersected with lipcert's in every local bound
        from lipcert.rounding import error_layers, logit_error_bound

        flat = torch.as_tensor(x[:count].reshape(count, -1))
        logits, err = logit_error_bound(error_layers(net), flat)
        start = time.perf_counter()
        radii, _ = local_radii(net, flat, y[:count], logits.numpy(), err.numpy(), bound.pairwise(), "2",
                               lcert.radii[LOCAL_METHOD][:count], rules=rules, intervals=lirpa.lirpa_intervals(net))
        acc = [float(np.mean((radii >= e) & lcert.correct[:count])) for e in eps]
        out["local+crown"] = (acc, (time.perf_counter() - start) / count, count)
        print(f"  local with CROWN intervals: {acc}", flush=True)
    box = net.input_range or (0.0, 1.0)
    for e in eps:
        res = lipcert.attack(net, x, y, norm=2, eps=e, steps=steps, restarts=restarts, input_range=box)
        out["upper"].append(res.robust_accuracy)
        out["violations"] += int(soundness_violations(lcert, res, LOCAL_METHOD).size)
    for name, count in (("crown", len(y)), ("alpha-crown", min(n_alpha, len(y)))):
        if lirpa is None or count == 0:
            out[name] = None if lirpa is None else "not run"
            continue
        try:
            ver = lirpa.verify(net, x[:count], y[:count], eps=eps, norm=2, verifier=name)
        except Exception as exc:  # noqa: BLE001  auto_LiRPA 0.3 asserts inside alpha-CROWN on some nets
            out[name] = f"failed: {type(exc).__name__} inside auto_LiRPA"
            print(f"  {name} failed: {exc!r}", flush=True)
            continue
        out[name] = (ver.certified_accuracy(eps), ver.seconds_per_input(), count)
        print(f"  {name}: {out[name][0]} ({out[name][1]:.2f} s/input/eps)", flush=True)
    return out


def pct(values) -> list[str]:
    return [f"{100 * v:.1f}" for v in values]


def table(res: dict) -> list[str]:
    eps, name = res["eps"], Path(res["model"].path).stem
    lines = [f"### {name} ({res['net'].widths[0]}-{'-'.join(map(str, res['net'].widths[1:]))}, "
             f"{', '.join(sorted(set(res['net'].activation_names)))}), first {res['n']} test images, "
             f"clean {100 * res['clean']:.1f} %",
             "",
             "| method | " + " | ".join(f"eps={eps_text(e)} (%)" for e in eps) + " | median radius | s / input |",
             "|---|" + "---:|" * (len(eps) + 2)]
    lines.append(f"| global combined (L = {res['bound']:.4g}) | " + " | ".join(pct(res["global"]))
                 + f" | {res['global_median']:.4g} | {res['global_s']:.3g} |")
    lines.append("| **local** | " + " | ".join(pct(res["local"]))
                 + f" | {res['local_median']:.4g} | {res['local_s']:.3g} |")
    if res["local+crown"] is not None:
        acc, sec, count = res["local+crown"]
        lines.append(f"| local with CROWN intervals (first {count}) | " + " | ".join(pct(acc))
                     + f" | | {sec:.3g} |")
    for name in ("crown", "alpha-crown"):
        label = "CROWN" if name == "crown" else "alpha-CROWN"
        if res[name] is None or isinstance(res[name], str):
            why = "adapter missing" if res[name] is None else res[name]
            lines.append(f"| {label} | " + " | ".join(["n/a"] * len(eps)) + f" | | ({why}) |")
            continue
        acc, sec, count = res[name]
        note = "" if count == res["n"] else f" (first {count})"
        lines.append(f"| {label}{note} | " + " | ".join(pct(acc))
                     + f" | | {sec:.3g} per eps |")
    lines.append("| PGD upper bound | " + " | ".join(pct(res["upper"])) + f" | | violations (local): "
                 f"{res['violations']} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "local.md"))
    p.add_argument("--models", default="", help="comma-separated substrings of model paths (default: all)")
    p.add_argument("--n-mlp", type=int, default=100)
    p.add_argument("--n-cnn", type=int, default=20)
    p.add_argument("--n-alpha", type=int, default=20, help="inputs for alpha-CROWN (slow)")
    p.add_argument("--crown-intervals", type=int, default=0,
                   help="also run local certification with auto_LiRPA's CROWN pre-activation bounds intersected "
                        "(option b; slow: one CROWN call per hidden layer per local bound) on this many inputs")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data)
    lirpa = load_lirpa()
    wanted = [m for m in MODELS if not args.models or any(s in m.path for s in args.models.split(","))]
    out = Path(args.out)
    head = [
        "# Local Lipschitz certification against the global bound, CROWN and alpha-CROWN (L2)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/local.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine('at the start')}. Times are wall-clock: under load indicative only; compare them within a row "
        "set, not with other tables.",
        "",
        "Certified accuracy = share of the first n test images that are correctly classified and certified at eps "
        "(L2 ball in [0, 1] pixel units, no clipping to the pixel range, for every method). global: pairwise "
        "margins over the pairwise combined constants. local: `lipcert.certify(..., local=True)`, the largest "
        "radius (bisection, relative tolerance 1 %) whose own local constants prove it, never below the global "
        f"one; rules {', '.join(r.name for r in LOCAL_RULES)} on MLPs, {', '.join(r.name for r in CNN_RULES)} on "
        f"CNNs, each with the multiplier dampings {', '.join(LOCAL_DAMPINGS)}; secant slopes anchored at the input. "
        "CROWN / alpha-CROWN: auto_LiRPA 0.3 via `lipcert.adapters.lirpa.verify` at each eps (its time is per "
        "input and eps; the local and global times are per input for the whole radius). PGD: "
        f"{args.steps} steps x {args.restarts} restarts, every success verified in float64; 'violations' counts "
        "inputs certified locally at eps yet broken (must be 0).",
        "",
    ]
    if lirpa is None:
        head += ["**auto_LiRPA adapter missing**: the CROWN and alpha-CROWN rows are left to the coordinator.", ""]
    out.write_text("\n".join(head) + "\n")
    start = time.perf_counter()
    for model in wanted:
        conv = "cnn" in model.path or "conv" in model.path or "cifar" in model.path
        res = bench(model, root, args.n_cnn if conv else args.n_mlp, args.n_alpha, lirpa, args.steps, args.restarts,
                    CNN_RULES if conv else LOCAL_RULES, args.crown_intervals)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write("\n".join(table(res)) + "\n")
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(f"Total {(time.perf_counter() - start) / 60:.1f} min; load average at the end {load_average()}.\n")


if __name__ == "__main__":
    main()
