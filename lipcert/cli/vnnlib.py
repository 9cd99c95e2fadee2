"""``lipcert vnnlib MODEL.onnx PROP.vnnlib``: answer a VNN-LIB property in the VNN-COMP convention.

The first line printed (and of ``--out``) is ``unsat`` (the property holds: proven), ``sat``
(followed by the counterexample), ``unknown`` or ``timeout``; a summary follows on stderr.
"""

from __future__ import annotations

import argparse
import sys

from ..bounds import METHODS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vnnlib", help="answer a VNN-LIB property (unsat/sat/unknown/timeout, VNN-COMP style)",
                       description="Prove a VNN-LIB property from a local Lipschitz bound over the input box "
                                   "(unsat), or find a counterexample checked with onnxruntime (sat).")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("property", help="the .vnnlib file (plain or .gz); its assertions describe a violation")
    p.add_argument("--timeout", type=float, default=None, help="seconds; answer 'timeout' when exceeded")
    p.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    p.add_argument("--method", default="local",
                   help="'local' (default): Lipschitz constants valid on the input box; or a global bound "
                        f"method: {', '.join(METHODS)}")
    p.add_argument("--attack-restarts", type=int, default=5, help="PGD restarts in the box (default 5)")
    p.add_argument("--attack-steps", type=int, default=50, help="PGD steps per restart (default 50)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..runfolder import check_output_file
    from ..vnncomp import vnnlib_check

    if args.out:
        check_output_file(args.out)
    result = vnnlib_check(args.model, args.property, timeout=args.timeout, method=args.method,
                          attack_steps=args.attack_steps, attack_restarts=args.attack_restarts)
    if args.out:
        result.write(args.out)
    print(result.to_text(), end="")
    proven = int(result.proven.sum())
    print(f"{result.status}: {proven}/{result.proven.size} disjuncts proven infeasible on the L2 ball of radius "
          f"{result.radius:.4g} around the box centre; {result.seconds:.3g} s"
          + (f"; {result.note}" if result.note and result.status != "unsat" else ""), file=sys.stderr)
    return 0
