"""Certified accuracy of the third-party models in ../shared/data, and the cost of certifying.

Run:  python benchmarks/certify.py [--data ../shared/data] [--attack-n 1000] [--out benchmarks/results/certify.md]

For every ONNX model of the shared data folder (the .pth checkpoints are the same networks):
clean accuracy and certified accuracy at the standard radii with the naive, ECLipsE-Fast and
combined bounds (L2, and L-infinity from the same bounds), the PGD upper bound on robust accuracy,
and the wall time of certifying the whole test set (10000 MNIST images; the 100 CIFAR-10 images
available) against a plain float64 forward pass over it.  The models are normally or
adversarially trained, not Lipschitz-trained, so certified accuracies at these radii are expected
to be tiny; they are reported as measured.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert import datasets
from lipcert.attacks import soundness_violations

from run_info import SHARED_DATA, machine

METHODS = ("naive", "eclipse-fast", "combined")
CIFAR_MEAN_KW, CIFAR_STD_KW = (0.485, 0.456, 0.406), (0.225, 0.225, 0.225)
CIFAR_MEAN_ERAN, CIFAR_STD_ERAN = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)
EPS = {("mnist", "2"): (0.5, 1.0, 1.58), ("cifar10", "2"): (36 / 255, 72 / 255, 108 / 255),
       ("mnist", "inf"): (0.005, 0.01, 0.02), ("cifar10", "inf"): (0.5 / 255, 1 / 255, 2 / 255)}


@dataclass(frozen=True)
class Model:
    path: str
    dataset: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


MODELS = (
    Model("mnistfc/mnist-net_256x2.onnx", "mnist"),
    Model("mnistfc/mnist-net_256x4.onnx", "mnist"),
    Model("mnistfc/mnist-net_256x6.onnx", "mnist"),
    Model("eran_mnist_6_100/mnist_6_100_nat.onnx", "mnist"),
    Model("eran_sigmoid_6x200/ffnnSIGMOID__Point_6x200.onnx", "mnist"),
    Model("mnist_cnn_a_adv/mnist_a_adv.onnx", "mnist"),
    Model("oval21_cifar_base_kw/cifar_base_kw.onnx", "cifar10", CIFAR_MEAN_KW, CIFAR_STD_KW),
    Model("eran_cifar_conv_small_pgd/cifar_conv_small_pgd.onnx", "cifar10", CIFAR_MEAN_ERAN, CIFAR_STD_ERAN),
)


def eps_text(e: float) -> str:
    """36/255 -> "36/255", 0.5 -> "0.5"."""
    k = e * 255
    return f"{k:g}/255" if len(f"{e:g}") > 6 and abs(2 * k - round(2 * k)) < 1e-9 else f"{e:g}"


def forward_seconds(net: lipcert.Network, x: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            net(torch.as_tensor(x[lo:lo + batch]))
    return time.perf_counter() - start


def bench_model(model: Model, root: Path, attack_n: int, steps: int, restarts: int, batch: int) -> dict:
    net = lipcert.load(root / "models" / model.path, mean=model.mean, std=model.std)
    data = datasets.load(model.dataset, root=root / "datasets", download=False)
    x = data.x.reshape(len(data.y), *net.input_shape)
    y = data.y
    print(f"{model.path}: {net}, {len(y)} inputs", flush=True)
    bounds = {m: lipcert.lipschitz(net, m) for m in METHODS}
    fwd = certify_s = float("inf")
    for _ in range(5):  # interleaved, best of 5: other jobs on the machine only ever slow a run down
        fwd = min(fwd, forward_seconds(net, x, batch))
        start = time.perf_counter()
        cert = lipcert.certify(net, x, y, bound=list(bounds.values()), batch_size=batch)
        certify_s = min(certify_s, time.perf_counter() - start)
    out = {"model": model, "net": net, "n": len(y), "clean": cert.clean_accuracy, "bounds": bounds,
           "forward_s": fwd, "certify_s": certify_s, "norms": {}}
    n_att = min(attack_n, len(y))
    for norm in ("2", "inf"):
        c = cert if norm == "2" else lipcert.certify(net, x, y, norm="inf", bound=list(bounds.values()),
                                                      batch_size=batch)
        eps = EPS[(model.dataset, norm)]
        row = {"eps": eps, "certified": {m: c.certified_accuracy(eps, m) for m in METHODS},
               "median": {m: c.radius_stats(m)["median"] for m in METHODS}, "upper": [], "violations": 0}
        sub = lipcert.certify(net, x[:n_att], y[:n_att], norm=norm, bound=list(bounds.values()), batch_size=batch)
        box = net.input_range or (0.0, 1.0)
        for e in eps:
            res = lipcert.attack(net, x[:n_att], y[:n_att], norm=norm, eps=e, steps=steps, restarts=restarts,
                                 input_range=box)
            row["upper"].append(res.robust_accuracy)
            row["violations"] += int(soundness_violations(sub, res).size)
            print(f"  L{norm} eps={e:.4g}: certified {c.certified_accuracy(e)[0]:.4f}, "
                  f"PGD upper bound {res.robust_accuracy:.4f} ({res.seconds:.1f} s)", flush=True)
        out["norms"][norm] = row
    out["n_attack"] = n_att
    return out


def render(results: list[dict], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Certified accuracy of the shared third-party models",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/certify.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine()}; total {seconds / 60:.1f} min.",
        "",
        "Certified accuracy = share of the test inputs that are correctly classified with a certified radius >= eps "
        "(pairwise margins over pairwise Lipschitz constants, margins reduced by a rigorous float64 rounding bound). "
        "L-inf radii are the L2 radii divided by sqrt(d) (d = 784 for MNIST, 3072 for CIFAR-10). "
        "Radii are in [0, 1] pixel units (the CIFAR models carry their normalization). "
        f"PGD upper bound: {args.steps} steps x {args.restarts} restarts (untargeted, then targeted at the next most "
        f"likely classes) on the first {args.attack_n} inputs, every success verified in float64; it bounds robust "
        "accuracy from above. 'violations' counts inputs certified at eps yet broken (must be 0).",
        "",
        "These models are normally (mnistfc, ERAN) or adversarially/convex-relaxation trained (CNN-A-Adv, OVAL21, "
        "ConvSmall-PGD), not Lipschitz-trained: global Lipschitz bounds certify almost nothing at the standard radii, "
        "as anchors.md section 2.4 predicts. The median radius column shows the scale they do certify.",
        "",
    ]
    for norm in ("2", "inf"):
        for ds in ("mnist", "cifar10"):
            group = [r for r in results if r["model"].dataset == ds]
            if not group:
                continue
            eps = EPS[(ds, norm)]
            name = "L2" if norm == "2" else "L-inf"
            lines += [f"## {ds.upper() if ds == 'mnist' else 'CIFAR-10'}, {name}", "",
                      "| model | n | clean (%) | method | L (bound) | "
                      + " | ".join(f"eps={eps_text(e)} (%)" for e in eps) + " | median radius |",
                      "|---|---:|---:|---|---:|" + "---:|" * len(eps) + "---:|"]
            for r in group:
                row = r["norms"][norm]
                for i, m in enumerate(METHODS):
                    head = (f"{Path(r['model'].path).stem} | {r['n']} | {100 * r['clean']:.2f}" if i == 0 else " | | ")
                    lines.append(f"| {head} | {m} | {r['bounds'][m].value:.4g} | "
                                 + " | ".join(f"{100 * a:.2f}" for a in row["certified"][m])
                                 + f" | {row['median'][m]:.3g} |")
                lines.append(f"| | {r['n_attack']} | | PGD upper bound | | "
                             + " | ".join(f"{100 * u:.2f}" for u in row["upper"])
                             + f" | violations: {row['violations']} |")
            lines.append("")
    lines += ["## Cost of certification", "",
              "Forward = plain float64 forward pass of the Network over the whole test set (batches of "
              f"{args.batch}). Certify = lipcert.certify with the three bounds given, i.e. "
              "float64 forward pass, rounding-error bound and the radii of all three methods. Both are the best "
              "of 5 interleaved runs. Bounds are the one-off cost (one run each; the first LAPACK call of a "
              "process and other jobs on the machine inflate some of them).",
              "",
              "| model | inputs | widths | bound naive (s) | bound ECLipsE-Fast (s) | bound combined (s) | "
              "forward (s) | certify (s) | certify / forward |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b = r["bounds"]
        lines.append(f"| {Path(r['model'].path).stem} | {r['n']} | {'-'.join(map(str, r['net'].widths))} | "
                     f"{b['naive'].seconds:.2f} | {b['eclipse-fast'].seconds:.2f} | {b['combined'].seconds:.2f} | "
                     f"{r['forward_s']:.3f} | {r['certify_s']:.3f} | {r['certify_s'] / r['forward_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--attack-n", type=int, default=1000, help="inputs attacked per model (default 1000)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--models", default=None, help="comma-separated substrings selecting models")
    p.add_argument("--out", type=Path, default=here / "results" / "certify.md")
    args = p.parse_args()
    start = time.perf_counter()
    chosen = [m for m in MODELS if args.models is None or any(s in m.path for s in args.models.split(","))]
    results = [bench_model(m, args.data, args.attack_n, args.steps, args.restarts, args.batch) for m in chosen]
    text = render(results, args, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
