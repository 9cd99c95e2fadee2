"""naive on CIFAR-size conv nets without dense matrices: time and peak memory (issue 18, part 2).

Run:  python benchmarks/conv_naive.py [--seed 0] [--out benchmarks/results/conv_norms.md]

Each case runs in a fresh subprocess (peak RSS = ru_maxrss of that process, which includes the
Python + torch baseline, measured alone as ``baseline``): build the network with conv layers as
:class:`~lipcert.operators.Conv2dOperator` (random He-scaled weights, ReLU) and bound it with
``naive`` matrix-free; where the dense form fits, the same network densified and bounded with
``naive`` on dense matrices.  Architectures: SDP-CROWN's CIFAR ConvSmall (conv 16 4x4/2, conv 32
4x4/2, fc 100, fc 10) and ConvLarge (conv 32 3x3/1, conv 32 4x4/2, conv 64 3x3/1, conv 64 4x4/2,
fc 512, fc 512, fc 10; 2.47 M parameters), padding 1 as in their models.  The results are appended
to the output file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from run_info import machine, peak_mb

ARCHS = {
    "ConvSmall": ([(16, 4, 2, 0), (32, 4, 2, 0)], [100]),
    "ConvLarge": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512]),
}


def build(arch: str, seed: int):  # type: ignore[no-untyped-def]
    from lipcert.network import Network
    from lipcert.operators import Conv2dOperator

    gen = torch.Generator().manual_seed(seed)
    convs, fcs = ARCHS[arch]
    shape: tuple[int, ...] = (3, 32, 32)
    layers: list = []
    for c_out, k, s, p in convs:
        kernel = torch.randn(c_out, shape[0], k, k, generator=gen, dtype=torch.float64) * (2 / (shape[0] * k * k)) ** 0.5
        op = Conv2dOperator.conv(kernel, shape, stride=s, padding=p)
        layers.append(op)
        shape = op.output_shape
    width = layers[-1].shape[0]
    for n in [*fcs, 10]:
        layers.append(torch.randn(n, width, generator=gen, dtype=torch.float64) * (2 / width) ** 0.5)
        width = n
    return Network.from_weights(layers, None, "relu", input_shape=(3, 32, 32))


def child(arch: str, mode: str, seed: int) -> None:
    from lipcert.bounds.methods import lipschitz

    start = time.perf_counter()
    out: dict = {"arch": arch, "mode": mode}
    if mode != "baseline":
        net = build(arch, seed)
        out["parameters"] = net.num_parameters
        out["dense_gb"] = net.dense_nbytes / 1e9
        if mode == "dense":
            net = net.densified(max_bytes=3 * 10**9)
        bound = lipschitz(net, "naive")
        out["value"] = bound.value
        out["path"] = bound.extras.get("path", "dense")
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_mb()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv_norms.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.seed)
        return
    command = "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]])
    start_line = machine("at the start")
    rows = []
    for arch, mode in [("-", "baseline"), ("ConvSmall", "matrix-free"), ("ConvSmall", "dense"),
                       ("ConvLarge", "matrix-free"), ("ConvLarge", "dense")]:
        proc = subprocess.run([sys.executable, __file__, "--seed", str(args.seed), "--child", arch, mode],
                              capture_output=True, text=True, cwd=Path(__file__).parent)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            rows.append(f"| {arch} | {mode} | - | - | - | - | failed: {last[:160]} |")
        else:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(f"| {arch} | {mode} | {r.get('parameters', '-')} | {r.get('dense_gb', 0):.3g} | "
                        f"{r.get('value', float('nan')):.6g} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "", "## naive on CIFAR-size conv nets: matrix-free vs dense (part 2)", "",
        f"Command: `{command}` (seed {args.seed}).", "", start_line + ".", machine() + ".", "",
        "Random He-scaled weights, ReLU; each row a fresh process; seconds = build + bound (+ densify); peak = "
        "ru_maxrss of the process (baseline: python + torch + lipcert imported, nothing built). dense GB = the "
        "float64 weight matrices the dense form needs.", "",
        "| model | path | parameters | dense GB | naive bound | seconds | peak MB |", "|---|---|---|---|---|---|---|",
        *rows, ""])
    with args.out.open("a", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
