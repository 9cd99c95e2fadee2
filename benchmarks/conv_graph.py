"""CIFAR-size conv ResNets bounded without dense matrices (issues 17 and 18; docs/decisions.md 51).

Run:  python benchmarks/conv_graph.py [--seed 0] [--budget-gb 2] [--blocks 2,4]
      (appends a section to --out, default benchmarks/results/conv.md)

Each model runs in a fresh subprocess (``peak MB`` is its ru_maxrss, python + torch + lipcert included;
``bound peak MB`` the growth of resident memory during the bound, :class:`lipcert.memory.PeakMemory`).
The models are VNN-COMP cifar2020 resnet_2b / resnet_4b-shaped: 3 x 32 x 32 input, a 3x3 stem conv to 16
channels, then BasicBlocks without BatchNorm, relu(conv2(relu(conv1(x))) + shortcut(x)), with identity
shortcuts and, where a block halves the grid and doubles the channels, a 1x1 stride-2 conv shortcut
(2 blocks: 16, 32 stride 2; 4 blocks: 16, 32 stride 2, 32, 64 stride 2), then flatten, a linear layer of 100,
ReLU and 10 logits.  Weights are random He-normal N(0, 2 / fan_in) (the scale at which ReLU nets are
trained), biases N(0, 0.01^2).  The model is loaded by ``lipcert.load`` (convolutions kept as operators,
in chains, branches and shortcuts) and bounded under ``--budget-gb``: naive, eclipse-fast and combined
each take the dense form of the whole graph if its estimate fits, else every chain its own path.  The
lower bound is the Jacobian bound (autograd, 64 random inputs, 20 ascent steps).
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

from run_info import machine, peak_mb, run_child

nn = torch.nn


class Block(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut(x)); a 1x1 stride-2 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


PLANS = {2: [(16, 16, 1), (16, 32, 2)], 4: [(16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2)]}


class ResNet(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.blocks = nn.Sequential(*[Block(*spec) for spec in PLANS[blocks]])
        side = 32 // 2 ** sum(s == 2 for _, _, s in PLANS[blocks])
        self.fc1 = nn.Linear(PLANS[blocks][-1][1] * side * side, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.stem(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


def resnet(blocks: int, seed: int) -> ResNet:
    """The model, float64, He-normal weights."""
    torch.manual_seed(seed)
    model = ResNet(blocks).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.normal_(m.bias, std=0.01)
    return model.eval()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import lipcert
    from lipcert.bounds.graph_lower import graph_jacobian_bound
    from lipcert.memory import PeakMemory

    start = time.perf_counter()
    net = lipcert.load(resnet(spec["blocks"], spec["seed"]), input_shape=(3, 32, 32))
    out: dict[str, Any] = {**spec, "load_s": time.perf_counter() - start, "dense_gb": net.dense_nbytes / 1e9,
                           "parameters": net.num_parameters, "structure": repr(net)[:400]}
    rows = []
    for method in spec["methods"]:
        try:
            with PeakMemory() as memory:
                b = lipcert.lipschitz(net, method, max_bytes=spec["budget"])
        except lipcert.LipcertError as exc:
            rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        rows.append({"method": method, "value": b.value, "seconds": b.seconds, "graph_path": b.extras.get("graph_path"),
                     "paths": [s["path"] for s in b.extras["stages"]], "bound_peak_mb": memory.peak_bytes / 1e6,
                     "memory_estimate_gb": b.extras.get("memory_estimate", 0) / 1e9,
                     "certificates": sum(s.get("certificate") is not None for s in b.extras["stages"])})
    t0 = time.perf_counter()
    low, _ = graph_jacobian_bound(net, samples=64, steps=20, generator=torch.Generator().manual_seed(spec["seed"]))
    out["lower"], out["lower_s"] = low, time.perf_counter() - t0
    out["bounds"] = rows
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_mb()
    return out


def _fmt(r: dict[str, Any]) -> list[str]:
    name = f"ResNet-{r['blocks']}b (CIFAR, random He-normal)"
    if "failed" in r:
        return [f"| {name} | failed: {r['failed']} |"]
    lines = []
    for b in r["bounds"]:
        if "error" in b:
            lines.append(f"| {name} | {b['method']} | - | refused: {b['error']} | - | - | - | {r['peak_mb']:.0f} |")
            continue
        paths = ", ".join(b["paths"])
        lines.append(f"| {name} | {b['method']} | {b['graph_path']}: {paths} | {b['value']:.6g} | "
                     f"{b['value'] / r['lower']:.3g} | {b['seconds']:.2f} | {b['bound_peak_mb']:.0f} | "
                     f"{r['peak_mb']:.0f} | {b['certificates']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--blocks", default="2,4")
    parser.add_argument("--methods", default="naive,eclipse-fast,combined")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]])
    start_line = machine("at the start")
    rows, results = [], []
    for blocks in (int(b) for b in args.blocks.split(",")):
        r = run_child(__file__, {"blocks": blocks, "seed": args.seed, "budget": args.budget_gb * 1e9,
                                 "methods": args.methods.split(",")})
        results.append(r)
        rows += _fmt(r)
        print("\n".join(_fmt(r)), f"(total {r.get('seconds', 0):.1f} s)", flush=True)
    extra = [f"- ResNet-{r['blocks']}b: {r['parameters']} parameters, dense form {r['dense_gb']:.3g} GB, load "
             f"{r['load_s']:.1f} s; Jacobian lower bound {r['lower']:.4g} ({r['lower_s']:.1f} s); process total "
             f"{r['seconds']:.1f} s; `{r['structure']}`" for r in results if "failed" not in r]
    text = "\n".join([
        "", f"## CIFAR-size conv ResNets (random weights) under a {args.budget_gb:g} GB budget (issue 17 x 18)", "",
        f"Command: `{command}` (seed {args.seed}); models and methods: benchmarks/conv_graph.py's docstring.", "",
        start_line + ".", machine() + ".", "",
        "path: the graph's route (dense: densified as a whole; operators: each chain its own path), then each "
        "stage's path (stem chain, block branches, head). / lower: the bound over the Jacobian lower bound. "
        "peak MB: ru_maxrss of the process (python + torch + lipcert included); bound peak MB: growth during "
        "that bound. block certificates: blocks whose per-frequency certificate (decisions 52) beat ||S|| + Lip(g).",
        "",
        "| model | method | path | bound | / lower | seconds | bound peak MB | peak MB | block certificates |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "", *extra, ""])
    with args.out.open("a", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
