"""``lipcert bound MODEL``: Lipschitz upper bounds by several methods, with the lower bound.

Every method's working memory is estimated before it runs (over ``--max-dense-gb``, or 80 % of the
memory available, the method is refused and reported); the lower bound has a time budget
(``--lower-seconds``); seconds, peak memory and the path (``dense`` or ``matrix-free``, chosen by the
memory estimate for networks with convolution operators) are reported per method.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..bounds import METHODS, lipschitz, lower_bound
from ..bounds.methods import resolve
from ..errors import LipcertError
from ..memory import PeakMemory
from .common import add_model_arguments, load_model

DEFAULT_METHODS = ("naive", "eclipse-fast", "combined")
DEFAULT_LOWER_SECONDS = 30.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bound", help="upper bounds on the L2 Lipschitz constant of a model",
                       description="Upper bounds on the L2 Lipschitz constant, with a lower bound for scale.")
    add_model_arguments(p)
    p.add_argument("--method", action="append", default=None,
                   help=f"method (repeat, comma-separate, or 'all'); default: {','.join(DEFAULT_METHODS)}. "
                        f"Known: {', '.join(METHODS)}")
    p.add_argument("--no-lower", action="store_true", help="skip the (pattern and Jacobian) lower bound")
    p.add_argument("--lower-seconds", type=float, default=DEFAULT_LOWER_SECONDS,
                   help=f"time budget of the lower bound in seconds (default {DEFAULT_LOWER_SECONDS:g}; the value "
                        "found by then is still a lower bound)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(run=run)


def _methods(requested: list[str] | None) -> list[str]:
    """The requested method names, each checked against the registry (before any model is loaded)."""
    names = [m.strip() for item in (requested or list(DEFAULT_METHODS)) for m in item.split(",") if m.strip()]
    if "all" in names:
        return list(METHODS)
    for name in names:
        resolve(name)
    return names


def run(args: argparse.Namespace) -> int:
    names = _methods(args.method)
    net = load_model(args)
    limit = None if args.max_dense_gb is None else args.max_dense_gb * 1e9
    bounds: dict[str, float | None] = {}
    seconds: dict[str, float | None] = {}
    peak: dict[str, int | None] = {}
    paths: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name in names:
        try:
            with PeakMemory() as memory:
                b = lipschitz(net, name, max_bytes=limit)
        except LipcertError as exc:  # over the memory limit, an SDP over its size limit: reported in the table
            bounds[name], seconds[name], peak[name], notes[name] = None, None, None, str(exc)
            continue
        bounds[name], seconds[name], peak[name] = b.value, b.seconds, memory.peak_bytes
        paths[name] = str(b.extras.get("path", "dense"))
        if "graph_path" in b.extras:  # a residual graph with operators: densified, or each chain its own path
            paths[name] += f" ({b.extras['graph_path']})"
        if b.status != "ok":
            notes[name] = b.status
    lower = None
    if not args.no_lower:
        try:
            with PeakMemory() as memory:
                lower = lower_bound(net, seconds=args.lower_seconds, max_bytes=limit)
            peak["lower bound"] = memory.peak_bytes
            if lower.status != "ok":
                notes["lower bound"] = lower.status
        except LipcertError as exc:
            notes["lower bound"] = str(exc)
    if args.json:
        if lower is not None:
            seconds["lower bound"] = lower.seconds
        out: dict[str, Any] = {"model": str(args.model), "widths": list(net.widths), "bounds": bounds,
                               "lower_bound": None if lower is None else lower.value, "seconds": seconds,
                               "peak_memory_bytes": peak, "paths": paths}
        if notes:
            out["notes"] = notes
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model}: {net}")
    naive = bounds.get("naive")
    header = f"{'method':<16}{'bound':>14}{'/naive':>10}{'/lower':>10}{'seconds':>10}{'peak MB':>10}  path"
    print(header)
    print("-" * len(header))
    for name, value in bounds.items():
        if value is None:
            print(f"{name:<16}{'n/a':>14}   {notes[name]}")
            continue
        r_naive = f"{value / naive:10.3f}" if naive else f"{'':>10}"
        r_low = f"{value / lower.value:10.3f}" if lower is not None and lower.value > 0 else f"{'':>10}"
        print(f"{name:<16}{value:14.6g}{r_naive}{r_low}{seconds[name]:10.3f}{_mb(peak[name]):>10}  {paths[name]}")
    if lower is not None:
        print(f"{'lower bound':<16}{lower.value:14.6g}{'':>20}{lower.seconds:10.3f}{_mb(peak['lower bound']):>10}   "
              f"(pattern {lower.pattern:.6g}, Jacobian {lower.jacobian:.6g})")
    for name, note in notes.items():
        if bounds.get(name) is not None:
            print(f"note: {name}: {note}")
    if "lower bound" in notes:
        print(f"note: lower bound: {notes['lower bound']}")
    if any(v is not None and not math.isfinite(v) for v in bounds.values()):
        print("note: some bounds overflowed float64")
    return 0


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f}"
