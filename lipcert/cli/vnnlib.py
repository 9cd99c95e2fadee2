"""``lipcert vnnlib MODEL.onnx PROP.vnnlib``: answer a VNN-LIB property in the VNN-COMP convention.

The first line printed (and of ``--out``) is ``unsat`` (the property holds: proven), ``sat``
(followed by the counterexample), ``unknown`` or ``timeout``; a summary follows on stderr.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from ..bounds import METHODS
from ..errors import InvalidArgumentError
from .config_source import add_config_argument, apply_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vnnlib", help="answer a VNN-LIB property (unsat/sat/unknown/timeout, VNN-COMP style)",
                       description="Prove a VNN-LIB property from a local Lipschitz bound over the input box "
                                   "(unsat), or find a counterexample checked with onnxruntime (sat).")
    p.add_argument("model", nargs="?", default=None, help="the ONNX model (or model.onnx_path of --config)")
    p.add_argument("property", nargs="?", default=None,
                   help="the .vnnlib file (plain or .gz); its assertions describe a violation (or "
                        "specification.vnnlib_path of --config)")
    p.add_argument("--timeout", type=float, default=None, help="seconds; answer 'timeout' when exceeded")
    p.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    p.add_argument("--method", default="local",
                   help="'local' (default): Lipschitz constants valid on the input box; or a global bound "
                        f"method: {', '.join(METHODS)}")
    p.add_argument("--attack-restarts", type=int, default=5, help="PGD restarts in the box (default 5)")
    p.add_argument("--attack-steps", type=int, default=50, help="PGD steps per restart (default 50)")
    add_config_argument(p)
    p.set_defaults(run=run)


def _instances(args: argparse.Namespace) -> list[tuple[str, str, float | None]]:
    """(model, property, timeout) to answer: the arguments, else the config's property or instances CSV."""
    config = apply_config(args)
    if config is not None and config.weights is not None and args.model is None:
        raise InvalidArgumentError(f"{config.path} names a model class ({config.model}); lipcert vnnlib needs the "
                                   "ONNX model (model.onnx_path, or MODEL): onnxruntime checks its counterexamples")
    if args.model is not None and args.property is not None:
        return [(args.model, args.property, args.timeout)]
    if config is not None and args.property is None and config.vnnlib_path is not None:
        args.property = config.vnnlib_path
    if args.model is not None and args.property is not None:
        return [(args.model, args.property, args.timeout)]
    if config is not None and config.csv_name is not None:
        csv = Path(config.csv_name)
        base = Path(config.vnnlib_prefix) if config.vnnlib_prefix else csv.parent
        rows = [r for r in (line.split(",") for line in csv.read_text(encoding="utf-8").splitlines()) if r[0]]
        return [(args.model or str(base / r[0].strip()), str(base / r[1].strip()),
                 args.timeout if args.timeout is not None or len(r) < 3 else float(r[2])) for r in rows]
    raise InvalidArgumentError("give MODEL and PROPERTY, or a --config with model.onnx_path and "
                               "specification.vnnlib_path (or general.csv_name)")


def run(args: argparse.Namespace) -> int:
    from ..runfolder import check_output_file
    from ..vnncomp import STATUSES

    instances = _instances(args)
    if args.out and len(instances) > 1:
        raise InvalidArgumentError(f"--out writes one result file, but the config lists {len(instances)} instances")
    if args.out:
        check_output_file(args.out, inputs=instances[0][:2], first_lines=STATUSES)
    for model, prop, timeout in instances:
        if len(instances) > 1:
            print(f"{model} {prop}", file=sys.stderr)
        _answer(args, model, prop, timeout)
    return 0


def _answer(args: argparse.Namespace, model: str, prop: str, timeout: float | None) -> None:
    from ..vnncomp import vnnlib_check

    result = vnnlib_check(model, prop, timeout=timeout, method=args.method,
                          attack_steps=args.attack_steps, attack_restarts=args.attack_restarts)
    if args.out:
        result.write(args.out)
    print(result.to_text(), end="")
    proven = int(result.proven.sum())
    print(f"{result.status}: {proven}/{result.proven.size} disjuncts proven infeasible on the L2 ball of radius "
          f"{result.radius:.4g} around the box centre; {result.seconds:.3g} s"
          + (f"; {result.note}" if result.note and result.status != "unsat" else ""), file=sys.stderr)
