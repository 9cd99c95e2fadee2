"""``lipcert demo``: certify the bundled model on the bundled test images and write the full report.

Needs no data set and no network: the model (a Lipschitz-margin trained Fashion-MNIST MLP) and
the first test images ship inside the package (:mod:`lipcert.demo`).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .common import floats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="certify the bundled demo model and write a report (no data or network needed)",
                       description="Certify a small Lipschitz-trained Fashion-MNIST model shipped with lipcert on "
                                   "the first test images (also shipped), attack it with PGD, and write "
                                   "report.json, samples.csv, report.md and report.html.")
    p.add_argument("--out", default="lipcert-demo", help="report folder (default: ./lipcert-demo)")
    p.add_argument("--eps", type=floats, default=None, help="L2 radii, pixels in [0, 1] (default: 0.5,1,1.58)")
    p.add_argument("--attack", action=argparse.BooleanOptionalAction, default=True,
                   help="run PGD at every eps: upper bounds on robust accuracy and a soundness check (default: on)")
    p.add_argument("--attack-steps", type=int, default=50, help="PGD steps per restart (default: 50)")
    p.add_argument("--attack-restarts", type=int, default=3, help="PGD restarts (default: 3)")
    p.add_argument("--no-plots", action="store_true", help="HTML report without plots")
    p.set_defaults(run=run)


def _command(args: argparse.Namespace, eps: list[float]) -> str:
    parts = ["lipcert", "demo", "--out", str(args.out), "--eps", ",".join(f"{e:g}" for e in eps)]
    if args.attack:
        parts += ["--attack-steps", str(args.attack_steps), "--attack-restarts", str(args.attack_restarts)]
    else:
        parts.append("--no-attack")
    return shlex.join(parts + (["--no-plots"] if args.no_plots else []))


def run(args: argparse.Namespace) -> int:
    from .. import demo
    from ..errors import InvalidArgumentError
    from ..norms import check_eps

    eps = [float(e) for e in check_eps(args.eps if args.eps else demo.DEFAULT_EPS)]
    if args.attack and (args.attack_steps < 1 or args.attack_restarts < 1):
        raise InvalidArgumentError("--attack-steps and --attack-restarts must be at least 1")
    card = demo.model_card()
    result = demo.run(args.out, eps=eps, attack_steps=args.attack_steps if args.attack else 0,
                      attack_restarts=args.attack_restarts, plots=not args.no_plots,
                      command=_command(args, eps))
    cert = result.certification
    bound, naive = cert.bounds["combined"], cert.bounds["naive"]
    print(f"model   {demo.MODEL_FILE}: {card['dataset']} MLP {'-'.join(map(str, result.network.widths))}, "
          f"Lipschitz-margin trained (see lipcert/data/{demo.CARD_FILE})")
    print(f"data    the first {cert.n} {card['dataset']} test images (bundled), pixels in [0, 1]")
    print(f"bound   Lipschitz constant <= {bound.value:.4g} by lipcert's combined closed forms (best rule "
          f"{bound.rule}, {bound.seconds:.2f} s); naive product of norms: {naive.value:.4g}")
    print(f"clean accuracy {100 * cert.clean_accuracy:.1f} %")
    upper = {float(a.eps[0]): a.robust_accuracy for a in result.attacks}
    print(f"{'eps (L2)':>10}  {'certified (combined)':>21}  {'certified (naive)':>18}  {'PGD upper bound':>16}")
    for e, acc, acc_naive in zip(eps, cert.certified_accuracy(eps, "combined"), cert.certified_accuracy(eps, "naive")):
        up = f"{100 * upper[e]:15.1f}%" if e in upper else f"{'-':>16}"
        print(f"{e:>10g}  {100 * acc:20.1f}%  {100 * acc_naive:17.1f}%  {up}")
    print(f"report  {result.files['html']} (also report.md, report.json, samples.csv)")
    broken = {e: v for e, v in result.violations.items() if v}
    if broken:
        print("error: the attack broke certified inputs (a soundness bug): "
              + ", ".join(f"{v} at eps {e:g}" for e, v in broken.items()), file=sys.stderr)
        return 1
    return 0
