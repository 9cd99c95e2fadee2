"""``lipcert compare MODEL --dataset mnist --norm 2 --eps ... --verifier crown,ibp --out DIR``: lipcert vs auto_LiRPA.

Runs ``lipcert certify`` (with the PGD attack) into ``DIR/lipcert``, then each verifier on the same
model (rebuilt from the same source), inputs, norm and eps, one line per (verifier, eps) in
``DIR/verifiers.jsonl`` as it goes (``--resume`` skips finished lines), and writes the comparison
report (comparison.json, comparison_samples.csv, report.md, report.html) into ``DIR``.
``--strategy lipschitz-first`` runs the verifiers only on the inputs lipcert did not certify.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .certify import CertifyRun, add_run_arguments, certify_run
from .common import add_model_arguments
from .model_source import model_object

STRATEGIES = ("all", "lipschitz-first")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare (or combine) lipcert with auto_LiRPA's IBP / CROWN / alpha-CROWN",
                       description="Certified accuracy of lipcert and auto_LiRPA verifiers on the same model, inputs, "
                                   "norm and eps, with the agreement per eps, time per input and the PGD upper bound. "
                                   "Needs auto_LiRPA: pip install --no-deps auto-LiRPA==0.3")
    add_model_arguments(p)
    add_run_arguments(p)
    p.add_argument("--verifier", default="crown",
                   help="comma-separated auto_LiRPA methods: ibp, crown, alpha-crown (default: crown)")
    p.add_argument("--strategy", choices=STRATEGIES, default="all",
                   help="all: every verifier on every input (agreement tables); lipschitz-first: verifiers only "
                        "on the inputs lipcert did not certify (union, provenance, time saved)")
    p.add_argument("--verifier-batch-size", type=int, default=32, help="inputs per verifier call (default: 32)")
    p.add_argument("--radius-steps", type=int, default=0,
                   help="also find CROWN's certified radius of every input by bisection with this many steps "
                        "(0: skip)")
    p.set_defaults(run=run, attack=True)


def _done_lines(path: Path, n: int, norm: str, strategy: str) -> dict[tuple[str, float], dict[str, Any]]:
    done: dict[tuple[str, float], dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if rec.get("n") == n and rec.get("norm") == norm and rec.get("strategy") == strategy:
            done[(rec["verifier"], float(rec["eps"]))] = rec
    return done


def _run_verifiers(args: argparse.Namespace, base: CertifyRun, out: Path, names: Sequence[str]
                   ) -> dict[tuple[str, float], dict[str, Any]]:
    """Each verifier at each eps (on all inputs, or those lipcert left); one JSON line each."""
    from ..adapters.lirpa import bounded_module, verify

    path = out / "verifiers.jsonl"
    n = len(base.y)
    done = _done_lines(path, n, base.norm, args.strategy) if args.resume else {}
    if not args.resume:
        path.unlink(missing_ok=True)
    lm = None
    cert = base.certification
    for name in names:
        for e in base.eps:
            if (name, e) in done:
                continue
            todo = np.flatnonzero(cert.correct & ~cert.certified(e)) if args.strategy == "lipschitz-first" \
                else np.arange(n)
            certified, lower = np.zeros(n, dtype=bool), np.full(n, np.nan)
            seconds = 0.0
            if todo.size:
                lm = lm or bounded_module(model_object(args), input_shape=args.input_shape, mean=args.mean, std=args.std)
                res = verify(lm, base.x[todo], base.y[todo], eps=[e], norm=base.norm, verifier=name,
                             batch_size=args.verifier_batch_size, index=todo)
                certified[todo], lower[todo] = res.verified[0], res.min_lower[0]
                seconds = float(res.input_seconds[0].sum())
            rec = {"verifier": name, "eps": e, "norm": base.norm, "n": n, "strategy": args.strategy,
                   "run_on": todo.tolist(), "certified": certified.astype(int).tolist(),
                   "min_lower": [None if np.isnan(v) else float(v) for v in lower], "seconds": seconds}
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[(name, e)] = rec
            print(f"{name} eps={e:g}: {int(certified.sum())} of {n} certified ({todo.size} run, {seconds:.3g} s)",
                  file=sys.stderr)
    return done


def _radius(args: argparse.Namespace, base: CertifyRun) -> dict[str, Any] | None:
    if args.radius_steps <= 0:
        return None
    from ..adapters.lirpa import bounded_module, certified_radius

    lm = bounded_module(model_object(args), input_shape=args.input_shape, mean=args.mean, std=args.std)
    cert = base.certification
    idx = np.flatnonzero(cert.correct)
    start = np.maximum(cert.radius[idx], 1e-6)
    res = certified_radius(lm, base.x[idx], base.y[idx], norm=base.norm, verifier="crown", start=start,
                           steps=args.radius_steps)
    radius = np.zeros(len(base.y))
    radius[idx] = res.radius
    return {"verifier": "crown", "steps": res.steps, "calls": res.calls,
            "median": float(np.median(radius[cert.correct])) if idx.size else 0.0,
            "seconds_per_input": float(res.input_seconds.mean()) if idx.size else 0.0,
            "lipcert_median": float(np.median(cert.radius[cert.correct])) if idx.size else 0.0,
            "radii": radius.tolist()}


def build_record(args: argparse.Namespace, base: CertifyRun, names: Sequence[str],
                 lines: dict[tuple[str, float], dict[str, Any]], radius: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison record and the per-input columns of comparison_samples.csv."""
    from ..report.verifiers import agreement

    cert, eps, n = base.certification, base.eps, len(base.y)
    rec = base.report.record
    lip = {e: cert.certified(e) for e in eps}
    timings = cert.timings
    lipcert: dict[str, Any] = {"run_dir": "lipcert", "methods": list(cert.methods),
               "certified_accuracy": {m: [float(cert.certified(e, m).mean()) for e in eps] for m in cert.methods},
               "seconds": dict(timings), "seconds_per_input": float(sum(timings.values())) / max(n, 1)}
    if len(cert.methods) > 1:
        lipcert["methods"].append("best")
        lipcert["certified_accuracy"]["best"] = [float(lip[e].mean()) for e in eps]
    verifiers, agree, combined = {}, {}, {}
    samples: dict[str, Any] = {"index": cert.index.tolist(), "label": cert.label.tolist(),
                               "prediction": cert.prediction.tolist(), "radius_lipcert": cert.radius.tolist()}
    for name in names:
        per = [lines[(name, e)] for e in eps]
        ver = {e: np.array(r["certified"], dtype=bool) for e, r in zip(eps, per)}
        ran = [len(r["run_on"]) for r in per]
        verifiers[name] = {"certified_accuracy": [float(ver[e].mean()) for e in eps],
                           "seconds_per_input": [r["seconds"] / k if k else None for r, k in zip(per, ran)],
                           "inputs_run": ran}
        union = [lip[e] | ver[e] for e in eps]
        if args.strategy == "all":
            agree[name] = [agreement(lip[e], ver[e]) for e in eps]
            alone = [r["seconds"] for r in per]
            rest = [r["seconds"] / n * int((cert.correct & ~lip[e]).sum()) for e, r in zip(eps, per)]
        else:
            correct = int(cert.correct.sum())
            alone = [r["seconds"] / k * correct if k else 0.0 for r, k in zip(per, ran)]
            rest = [r["seconds"] for r in per]
        total = [float(sum(timings.values())) + s for s in rest]
        combined[name] = {"certified_accuracy": [float(u.mean()) for u in union],
                          "by_lipcert": [float(lip[e].mean()) for e in eps],
                          "by_verifier": [float((ver[e] & ~lip[e]).mean()) for e in eps],
                          "total_seconds": total, "verifier_alone_seconds": alone,
                          "time_saved": [a - t for a, t in zip(alone, total)]}
        for e, r in zip(eps, per):
            samples[f"{name}@{e:g}"] = ver[e].tolist()
            samples[f"{name}@{e:g}:min_lower"] = ["" if v is None else v for v in r["min_lower"]]
            prov = np.where(lip[e], "lipcert", np.where(ver[e], name, "none"))
            samples[f"source:{name}@{e:g}"] = prov.tolist()
    attack = None
    if base.attacks:
        from ..report.record import attack_eps

        broken = {attack_eps(a): a.success for a in base.attacks}
        att_eps = [e for e in eps if e in broken]
        violations = {"lipcert": [int((lip[e] & broken[e]).sum()) for e in att_eps]}
        for name in names:
            ver = {e: np.array(lines[(name, e)]["certified"], dtype=bool) for e in att_eps}
            violations[name] = [int((ver[e] & broken[e]).sum()) for e in att_eps]
        attack = {"eps": att_eps, "upper_bound": [float((cert.correct & ~broken[e]).mean()) for e in att_eps],
                  "violations": violations}
    if radius is not None:
        samples["radius_crown"] = radius.pop("radii")
    record = {key: rec[key] for key in ("lipcert_version", "created", "model", "dataset", "n_inputs", "input_dim",
                                        "norm", "clean_accuracy")}
    record.update({"command": shlex.join(["lipcert", *sys.argv[1:]]) if sys.argv else None,
                   "strategy": args.strategy, "eps": eps, "lipcert": lipcert, "verifiers": verifiers,
                   "agreement": agree, "combined": combined,
                   "attack": attack, "radius": radius})
    return record, samples


def run(args: argparse.Namespace) -> int:
    from ..adapters.lirpa import load_auto_lirpa, verifier_name
    from ..runfolder import check_output_folder, hold

    start = time.perf_counter()
    check_output_folder(args.out, accept=("missing", "empty", "verifiers"))
    names = list(dict.fromkeys(verifier_name(v) for v in args.verifier.split(",") if v.strip()))
    load_auto_lirpa()  # fail early, before lipcert's run, when the extra is missing
    out = Path(args.out)
    with hold(out / "verifiers.jsonl"):  # one compare per folder (its certify run takes its own lock too)
        return _compare(args, out, names, start)


def _compare(args: argparse.Namespace, out: Path, names: Sequence[str], start: float) -> int:
    from ..report.verifiers import write_comparison

    base = certify_run(args, out / "lipcert")
    lines = _run_verifiers(args, base, out, names)
    radius = _radius(args, base)
    record, samples = build_record(args, base, names, lines, radius)
    record["seconds_total"] = time.perf_counter() - start
    files = write_comparison(out, record, samples)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    att = record["attack"]
    if att and any(sum(v) for v in att["violations"].values()):
        print(f"error: inputs certified yet broken by the attack: {att['violations']}", file=sys.stderr)
        return 1
    return 0
