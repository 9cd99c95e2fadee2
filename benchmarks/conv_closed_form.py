"""The closed forms with per-channel multipliers on conv chains, per frequency (issue 18, part 3).

Run:  python benchmarks/conv_closed_form.py [--seed 0] [--out benchmarks/results/conv_closed_form.md]

1. Random chains of 3x3 stride-1 convs (kernels N(0, 1 / (9 C_in))), ReLU, then W_L (10 x flat), with
   circular or zero padding, small grids: the per-frequency ECLipsE-Fast and combined of
   :mod:`lipcert.bounds.conv_closed_form` beside the dense ones on ``net.densified()``, matrix-free naive
   and the rigorous lower bound.
2. The shared CNN-A (MNIST) and ConvSmall (CIFAR) checkpoints (stride 2; zero and valid padding) as operator
   networks: ``lipschitz(net, method)`` per frequency against the dense path.
3. Nets too large for the dense path: a zero-padded 32x32 stride-1 chain and a ConvLarge-shaped net (conv
   3->32 3x3, 32->32 4x4 s2, 32->64 3x3, 64->64 4x4 s2, fc 4096-512-512-10, He-scale random weights).
Times are wall seconds in one process; peaks are the resident-memory growth of each call (PeakMemory).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from lipcert.adapters.graph import build_network
from lipcert.adapters.torch import analyze_module
from run_info import SHARED_DATA, machine

from lipcert import reference_models
from lipcert.bounds.lower import lower_bound
from lipcert.bounds.matrix_free import naive
from lipcert.bounds.methods import lipschitz
from lipcert.bounds.rules import DEFAULT_RULE_SET
from lipcert.bounds.workspace import per_frequency_bytes
from lipcert.memory import PeakMemory
from lipcert.network import Network
from lipcert.operators import Conv2dOperator


def build(channels: list[int], n: int, circular: bool, seed: int) -> Network:
    gen = torch.Generator().manual_seed(seed)
    ops = [Conv2dOperator.conv(torch.randn(b, a, 3, 3, generator=gen, dtype=torch.float64) / math.sqrt(9 * a),
                               (a, n, n), padding=1, circular=circular) for a, b in itertools.pairwise(channels)]
    flat = channels[-1] * n * n
    last = torch.randn(10, flat, generator=gen, dtype=torch.float64) / math.sqrt(flat)
    return Network.from_weights([*ops, last], None, "relu", input_shape=(channels[0], n, n))


def conv_large(seed: int) -> Network:
    """SDP-CROWN's CIFAR ConvLarge shape with He-scale random weights (std sqrt(2 / fan_in))."""
    gen = torch.Generator().manual_seed(seed)
    ops, shape = [], (3, 32, 32)
    for c_out, k, s in [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)]:
        kernel = torch.randn(c_out, shape[0], k, k, generator=gen, dtype=torch.float64) * math.sqrt(2 / (shape[0] * k * k))
        ops.append(Conv2dOperator.conv(kernel, shape, stride=s, padding=1))
        shape = ops[-1].output_shape
    dense = [torch.randn(b, a, generator=gen, dtype=torch.float64) * math.sqrt(2 / a)
             for a, b in [(4096, 512), (512, 512), (512, 10)]]
    return Network.from_weights([*ops, *dense], None, "relu", input_shape=(3, 32, 32))


def checkpoint(file: str) -> Network:
    """A shared model as an operator network; the OVAL21 base_kw ONNX rebuilt from its initializers (no input
    normalization: bounds in the normalized input space)."""
    if file.endswith(".onnx"):
        import onnx

        params = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()).double()
                  for t in onnx.load(str(SHARED_DATA / "models" / file)).graph.initializer}
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 4, 2, 1),
                                     torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1024, 100), torch.nn.ReLU(),
                                     torch.nn.Linear(100, 10)).double()
        module.load_state_dict(params)
        shape: tuple[int, ...] = (3, 32, 32)
    else:
        module = reference_models.load_checkpoint(SHARED_DATA / "models" / file).double()
        shape = reference_models.CHECKPOINTS[Path(file).name].input_shape
    return build_network(analyze_module(module.eval(), input_shape=shape), operators=True)


def measured(fn, *args):  # type: ignore[no-untyped-def]
    with PeakMemory() as peak:
        start = time.perf_counter()
        value = fn(*args)
        seconds = time.perf_counter() - start
    return value, seconds, peak.peak_bytes / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv_closed_form.md")
    args = parser.parse_args()
    start_line = machine("at the start")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    rows = [("| padding | grid | channels | per-freq ECLipsE-Fast (s) | per-freq combined (s) | dense ECLipsE-Fast (s) "
             "| dense combined (s) | naive | lower bound |"), "|---|---|---|---|---|---|---|---|---|"]
    for circular, n in itertools.product((True, False), (8, 16)):
        channels = [3, 8, 8, 8]
        net = build(channels, n, circular, args.seed)
        fast, t_fast, _ = measured(lipschitz, net, "eclipse-fast")
        comb, t_comb, _ = measured(lipschitz, net, "combined")
        dense_net = net.densified()
        d_fast, t_dfast, _ = measured(lipschitz, dense_net, "eclipse-fast")
        d_comb, t_dcomb, _ = measured(lipschitz, dense_net, "combined")
        low = float(lower_bound(dense_net, restarts=8, samples=128, seed=args.seed))
        rows.append(f"| {'circular' if circular else 'zero'} | {n}x{n} | {channels} | {fast.value:.4f} ({t_fast:.2f}) | "
                    f"{comb.value:.4f} ({t_comb:.2f}) | {d_fast.value:.4f} ({t_dfast:.2f}) | {d_comb.value:.4f} ({t_dcomb:.2f}) | "
                    f"{naive(net).value:.4f} | {low:.4f} |")
    models = [("| model | method | per-frequency value (path, rule) | s | peak MB | dense value | s | peak MB |"),
              "|---|---|---|---|---|---|---|---|"]
    lows = []
    for file in ("mnist_cnn_a_adv/mnist_a_adv.pth", "eran_cifar_conv_small_pgd/cifar_conv_small_pgd.pth",
                 "oval21_cifar_base_kw/cifar_base_kw.onnx"):
        net = checkpoint(file)
        dense_net = net.densified()
        for method in ("eclipse-fast", "combined"):
            ours, t_ours, m_ours = measured(lipschitz, net, method)
            ref, t_ref, m_ref = measured(lipschitz, dense_net, method)
            models.append(f"| {Path(file).stem} | {method} | {ours.value:.4f} ({ours.extras['path']}, {ours.rule}) | "
                          f"{t_ours:.2f} | {m_ours:.0f} | {ref.value:.4f} | {t_ref:.2f} | {m_ref:.0f} |")
        lows.append(f"{Path(file).stem}: naive {naive(net).value:.4f}, lower bound "
                    f"{float(lower_bound(dense_net, restarts=4, samples=64, seed=args.seed, seconds=30)):.4f}")
    large = ["| net | method | value (path, rule) | per-rule values | s | peak MB | estimate MB |", "|---|---|---|---|---|---|---|"]
    for label, net in (("zero-padded 32x32 [3, 32, 32, 64, 64] + W_L", build([3, 32, 32, 64, 64], 32, False, args.seed)),
                       ("ConvLarge shape, He-scale random", conv_large(args.seed))):
        for method in ("naive", "eclipse-fast", "combined"):
            bound, seconds, peak = measured(lipschitz, net, method)
            estimate = per_frequency_bytes(net, method, {"rules": DEFAULT_RULE_SET}) / 1e6
            rules = ", ".join(f"{k} {v:.3f}" for k, v in bound.per_rule.items())
            widest = max(net.widths[1:-1])
            large.append(f"| {label} (dense weights {net.dense_nbytes / 1e9:.1f} GB, one {widest}-square matrix "
                         f"{8 * widest**2 / 1e9:.1f} GB) | {method} | {bound.value:.4f} "
                         f"({bound.extras['path']}, {bound.rule}) | {rules} | {seconds:.2f} | {peak:.0f} | "
                         f"{'-' if method == 'naive' else f'{estimate:.0f}'} |")
    text = "\n".join([
        "# Closed forms on conv chains, one C x C block per frequency (issue 18, part 3)", "",
        f"Command: `{threads}{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`", "",
        start_line, machine(), "",
        ("Small stride-1 grids (dense path feasible; lower bound: lipcert.bounds.lower on the densified net); "
         "values from `lipschitz()`, per frequency on the operator net:"), "",
        *rows, "",
        ("Shared models as operator networks (stride 2; CNN-A and OVAL21 base_kw zero padding 1, ConvSmall none; "
         "peak: resident growth, 0 where the memory of earlier calls was reused):"), "",
        *models, "", *[f"- {line}" for line in lows], "",
        ("Nets the dense path cannot hold (`lipschitz()` on the operator net; estimate: "
         "`workspace.per_frequency_bytes`):"), "",
        *large, "",
        ("Zero padding goes through the circular surrogate (docs/decisions.md 27): sound, >= the dense pass with the "
         "same multipliers, and on zero-padded grids the matrix-free naive product runs beside it (the smaller is "
         "reported).  Per-channel GC/GCs row sums are per frequency block, at most the dense row sums (decisions 27), "
         "which is how the per-frequency combined can come out below the dense combined."), ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
