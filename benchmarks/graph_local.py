"""Local against global certified accuracy of the zoo's Lipschitz-trained residual models (decisions 45).

Run:  python benchmarks/graph_local.py [--n 30] [--out benchmarks/results/graphs.md] [--random N]

On the first n Fashion-MNIST test images: radii of the global ``combined`` bound and the local radii of
``lipcert.certify(..., local={"iterations": 0})`` (the chain form's local bound and the greedy graph recursion
with the restricted slopes), certified accuracy at 0.5 / 1.0 / 1.58, the median ratio local / global over the
certified inputs, seconds per input, and inputs certified locally yet broken by PGD (must be 0).  Appends
one line per model to the results file.
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
from lipcert.graph import GraphNetwork
from lipcert.local import LOCAL_METHOD
from lipcert.radii import pairwise_constants

from graph_blocks import graph
from run_info import SHARED_DATA, load_average, machine

REPO = Path(__file__).resolve().parents[1]
MODELS = ("fmnist-sll-maxmin", "fmnist-lipres-groupsort")
EPS = (0.5, 1.0, 1.58)


def row(name: str, n: int, data: Path) -> str:
    net = lipcert.load(REPO / "benchmarks" / "zoo" / "models" / f"{name}.onnx", input_range=(0.0, 1.0))
    x, y = datasets.load("fashion-mnist", "test", data, limit=n, download=False)
    return measured(name, net, x, y)


def random_row(act: str, n: int, seed: int) -> str:
    """The random residual graph of benchmarks/graph_blocks.py (12 -> 10, width 16, four blocks) with ``act``,
    n Gaussian inputs labelled by its own predictions."""
    rng = np.random.default_rng(seed)
    net = graph(rng, act)
    x = rng.standard_normal((n, 12))
    return measured(f"random {act} (seed {seed})", net, x, np.asarray(net(x)).argmax(axis=1))


def measured(name: str, net: GraphNetwork, x: np.ndarray, y: np.ndarray) -> str:
    n = len(y)
    start = time.perf_counter()
    cert = lipcert.certify(net, x, y, method="combined", local={"iterations": 0}, progress=False)
    seconds = time.perf_counter() - start
    local, glob = cert.radii[LOCAL_METHOD], cert.radii["combined"]
    hit = lipcert.attack(net, x, y, norm=2, eps=np.maximum(local, 1e-12), steps=50, restarts=2, progress=False)
    broken = soundness_violations(cert, hit, LOCAL_METHOD).size
    acc = [100 * float(a) for m in ("combined", LOCAL_METHOD) for a in cert.certified_accuracy(list(EPS), method=m)]
    good = cert.correct & (glob > 0)
    ratio = float(np.median(local[good] / glob[good])) if good.any() else float("nan")
    room = float(np.median(_room(net, x, y, pairwise_constants(cert.bounds["combined"], net))[good[cert.correct]]))
    return (f"| {name} | {n} | {' / '.join(f'{a:.1f}' for a in acc[:3])} | {' / '.join(f'{a:.1f}' for a in acc[3:])} "
            f"| {ratio:.3f} | {room:.3f} | {100 * float(np.mean(local[good] > glob[good] * 1.001)):.0f} % "
            f"| {cert.timings['local_per_input']:.1f} s | {seconds:.0f} s | {broken} |")


def _room(net: GraphNetwork, x: np.ndarray, y: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per correct input, L_yj / ||grad (f_y - f_j)(x)|| for the runner-up j: every constant valid on a ball around x
    is at least that gradient norm, so this bounds how much a local radius can gain on the global one (through j)."""
    pts = torch.as_tensor(np.asarray(x, np.float64).reshape(len(y), -1)).requires_grad_(True)
    out = net.forward_flat(pts)
    gains = []
    for i in range(len(y)):
        logits = out[i].detach().numpy()
        if logits.argmax() != y[i]:
            continue
        j = int(np.argsort(logits)[-2])
        (g,) = torch.autograd.grad(out[i, int(y[i])] - out[i, j], pts, retain_graph=True)
        gains.append(pairs[int(y[i]), j] / float(g[i].norm()))
    return np.array(gains)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA / "datasets")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/graphs.md"))
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="instead of the zoo models: random residual graphs of four activations, N inputs each")
    args = p.parse_args()
    before = load_average()
    if args.random:
        rows = [random_row(act, args.random, seed) for act in ("relu", "tanh", "silu", "abs") for seed in (0,)]
    else:
        rows = [row(name, args.n, args.data_dir) for name in MODELS]
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/graph_local.py", *sys.argv[1:]])
    text = [
        "", "## Local radii of the residual models (decisions 45)", "",
        f"Command: `OMP_NUM_THREADS=1 {command}`; load average {before} at the start.", "",
        machine(), "",
        "First n test images (or n Gaussian inputs of a random graph), L2; global = `combined`, local = `certify(..., local={\"iterations\": 0})` "
        "(never below the global radius). Certified accuracy (%) at 0.5 / 1.0 / 1.58; ratio = median local / "
        "global radius over correct inputs; room = median of L_yj / ||grad (f_y - f_j)(x)|| for the runner-up j (no "
        "local constant can be below that gradient, so no local radius gains more than this through j); larger = share of them whose local radius is > 1.001 x the global one; "
        "PGD (50 steps, 2 restarts) at the local radii.", "",
        "| model | n | global | local | ratio | room | larger | local s / input | total | broken by PGD |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
        *rows, ""]
    with args.out.open("a") as f:
        f.write("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
