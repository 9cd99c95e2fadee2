"""Seconds of `lipschitz(net, "combined")` on a residual zoo model, split into the stagewise composition and
the carried-form recursion (graph_recursion), with the torch thread count and the machine load (decisions 39).

Run:  OMP_NUM_THREADS=2 python benchmarks/graph_speed.py benchmarks/zoo/models/fmnist-sll-maxmin.onnx
Prints one JSON line; benchmarks/results/graph_speed.md collects them (before/after runs of two commits).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

import lipcert
from lipcert.bounds import graph as graph_bounds

_recursion = graph_bounds.graph_recursion
_spent: list[float] = []


def _timed(*args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    out = _recursion(*args, **kwargs)
    _spent.append(time.perf_counter() - start)
    return out


def main(path: str) -> None:
    setattr(graph_bounds, "graph_recursion", _timed)  # graph.py calls it through its module
    net = lipcert.load(path)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    bound = lipcert.lipschitz(net, "combined")
    total = time.perf_counter() - start
    print(json.dumps({"model": os.path.basename(path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                      "torch threads": torch.get_num_threads(), "value": bound.value, "total": round(total, 1),
                      "recursion": round(sum(_spent), 1), "stagewise": round(total - sum(_spent), 1),
                      "load1 before": load, "load1 after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main(sys.argv[1])
