"""``lipcert bound MODEL``: Lipschitz upper bounds by several methods, with the lower bound."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..bounds import METHODS, lipschitz, lower_bound
from ..bounds.methods import resolve
from ..errors import LipcertError
from .common import add_model_arguments, load_model

DEFAULT_METHODS = ("naive", "eclipse-fast", "combined")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bound", help="upper bounds on the L2 Lipschitz constant of a model",
                       description="Upper bounds on the L2 Lipschitz constant, with a lower bound for scale.")
    add_model_arguments(p)
    p.add_argument("--method", action="append", default=None,
                   help=f"method (repeat, comma-separate, or 'all'); default: {','.join(DEFAULT_METHODS)}. "
                        f"Known: {', '.join(METHODS)}")
    p.add_argument("--no-lower", action="store_true", help="skip the (pattern and Jacobian) lower bound")
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
    bounds: dict[str, float | None] = {}
    seconds: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name in names:
        try:
            b = lipschitz(net, name)
        except LipcertError as exc:  # e.g. an SDP over its size limit: reported in the table
            bounds[name], seconds[name], notes[name] = None, None, str(exc)
            continue
        bounds[name], seconds[name] = b.value, b.seconds
        if b.status != "ok":
            notes[name] = b.status
    lower = None if args.no_lower else lower_bound(net)
    if args.json:
        out: dict[str, Any] = {"model": str(args.model), "widths": list(net.widths), "bounds": bounds,
               "lower_bound": None if lower is None else lower.value, "seconds": seconds}
        if notes:
            out["notes"] = notes
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model}: {net}")
    naive = bounds.get("naive")
    header = f"{'method':<16}{'bound':>14}{'/naive':>10}{'/lower':>10}{'seconds':>10}"
    print(header)
    print("-" * len(header))
    for name, value in bounds.items():
        if value is None:
            print(f"{name:<16}{'n/a':>14}   {notes[name]}")
            continue
        r_naive = f"{value / naive:10.3f}" if naive else f"{'':>10}"
        r_low = f"{value / lower.value:10.3f}" if lower is not None and lower.value > 0 else f"{'':>10}"
        print(f"{name:<16}{value:14.6g}{r_naive}{r_low}{seconds[name]:10.3f}")
    if lower is not None:
        print(f"{'lower bound':<16}{lower.value:14.6g}{'':>20}{lower.seconds:10.3f}   "
              f"(pattern {lower.pattern:.6g}, Jacobian {lower.jacobian:.6g})")
    for name, note in notes.items():
        if bounds.get(name) is not None:
            print(f"note: {name}: {note}")
    if any(v is not None and not math.isfinite(v) for v in bounds.values()):
        print("note: some bounds overflowed float64")
    return 0
