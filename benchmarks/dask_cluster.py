"""Local radii on a Dask LocalCluster of 1 and 2 worker processes, and what 10 000 inputs would take on more.

Run:  python benchmarks/dask_cluster.py [--data ../shared/data] [--n 200] [--out benchmarks/results/distributed.md]

Certifies the first n MNIST test images with ``lipcert.certify(..., local=True, client=...)`` on ERAN's
mnist_6_100_nat on LocalClusters of 1 and 2 single-threaded worker processes (each started before its
timer), checks that both give the same bits, and measures the cluster's overhead per task with no-op
tasks.  From the measured per-input cost c (seconds of one worker per local radius), the overhead o per
task and the global bound's time b, it extrapolates to N = 10 000 inputs on W workers as
T(W) = b + N c / W + n_tasks(W) o, with the scheduler's overhead counted as if it were serial (an upper
estimate) and no input costing more than the measured mean (a cluster's tail is one shard).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import lipcert
from lipcert import datasets
from lipcert.distributed import connect, shard_size

from run_info import SHARED_DATA, load_average, machine

MODEL = "eran_mnist_6_100/mnist_6_100_nat.onnx"
TARGET_N, TARGET_WORKERS, BATCH = 10_000, (8, 64, 256), 1000


def _noop(i: int) -> int:
    return i


def task_overhead(client, tasks: int = 500) -> float:  # type: ignore[no-untyped-def]
    """Seconds per task of ``tasks`` no-op tasks submitted at once and gathered (scheduler and worker share)."""
    client.gather(client.map(_noop, range(50), pure=False))  # warm the workers' function caches
    start = time.perf_counter()
    client.gather(client.map(_noop, range(tasks), pure=False))
    return (time.perf_counter() - start) / tasks


def run(net: lipcert.Network, x: np.ndarray, y: np.ndarray, workers: int) -> tuple[lipcert.Certification, float, float]:
    client = connect(workers=workers)
    try:
        overhead = task_overhead(client)
        start = time.perf_counter()
        cert = lipcert.certify(net, x, y, local=True, batch_size=BATCH, client=client, progress=False)
        return cert, time.perf_counter() - start, overhead
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "distributed.md")
    args = ap.parse_args()
    before = load_average()
    net = lipcert.load(args.data / "models" / MODEL)
    data = datasets.load("mnist", root=args.data / "datasets", limit=args.n, download=False)
    x = data.x.reshape(len(data.y), *net.input_shape).astype(np.float64)
    y = np.asarray(data.y)
    results = {w: run(net, x, y, w) for w in (1, 2)}
    (one, t1, o1), (two, t2, o2) = results[1], results[2]
    same = all(np.array_equal(one.radii[m], two.radii[m]) for m in one.methods) and \
        np.array_equal(one.margin, two.margin) and np.array_equal(one.logit_error, two.logit_error)
    c = one.timings["local_per_input"]
    b = one.timings["bound:combined"]
    o = max(o1, o2)
    lines = [
        "# Local radii on a Dask cluster",
        "",
        f"Command: `python {shlex.join(['benchmarks/dask_cluster.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {machine('at the end')}; load average {before} at the start.",
        "",
        f"Model: ERAN {MODEL} (the L2 global `combined` bound, then local radii, default local options), the "
        f"first {args.n} MNIST test images, batch size {BATCH}; a LocalCluster of single-threaded worker "
        "processes started before each timer (start-up not counted).",
        "",
        "| workers | wall time of certify (s) | radii (s) | local CPU s per input | tasks' overhead (ms/task) |"
        " certified at 0.3 (local) |",
        "|---|---|---|---|---|---|",
    ]
    for w, (cert, t, ov) in results.items():
        lines.append(f"| {w} | {t:.1f} | {cert.timings['radii']:.1f} | {cert.timings['local_per_input']:.3f} | "
                     f"{1e3 * ov:.2f} | {100 * cert.certified_accuracy(0.3, 'local')[0]:.1f} % |")
    lines += [
        "",
        f"Speed-up 1 -> 2 workers: **{t1 / t2:.2f}x** (target >= 1.7x). Bit-identical radii, margins and "
        f"rounding bounds for 1 and 2 workers: **{'yes' if same else 'NO'}**.",
        "",
        f"## Extrapolation to {TARGET_N:,} inputs",
        "",
        f"T(W) = b + N c / W + n_tasks o with b = {b:.2f} s (the global bound, computed once on the driver), "
        f"c = {c:.3f} s per input (1 worker above), o = {1e3 * o:.2f} ms per task (the larger of the two no-op "
        "measurements), n_tasks = N / shard + N / batch (local shards of "
        "`lipcert.distributed.shard_size` inputs, one forward task per batch of 1000); o is counted as if the "
        "scheduler handled tasks one at a time, so the overhead term is an upper estimate.",
        "",
        "| workers | inputs per task | tasks | compute N c / W (s) | overhead n_tasks o (s) | T (s) | T (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in TARGET_WORKERS:
        shard = shard_size(BATCH, w)
        tasks = TARGET_N // shard + TARGET_N // BATCH
        compute, over = TARGET_N * c / w, tasks * o
        total = b + compute + over
        lines.append(f"| {w} | {shard} | {tasks} | {compute:.0f} | {over:.1f} | {total:.0f} | {total / 60:.1f} |")
    lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
