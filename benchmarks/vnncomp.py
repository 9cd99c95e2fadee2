"""lipcert on every VNN-COMP 2021 instance shipped in ../shared/data, against the recorded outcomes.

Run:  python benchmarks/vnncomp.py [--data ../shared/data] [--timeout 30] [--out benchmarks/results/vnncomp.md]

For each benchmark folder holding a ``vnncomp2021_results.csv`` (mnistfc, eran_sigmoid_6x200,
oval21_cifar_base_kw), every (onnx, vnnlib) row is answered with :func:`lipcert.vnncomp.vnnlib_check`
(local Lipschitz proof, then PGD in the box with onnxruntime-checked counterexamples) under a
per-instance timeout, next to the VNN-COMP 2021 outcome recorded in the CSV (``holds`` = the
property holds = ``unsat``; ``violated`` = a counterexample exists = ``sat``).  A lipcert ``unsat``
on a ``violated`` row would be a soundness bug and is counted as ``wrong``.  The table is rewritten
after every instance, so an interrupted run leaves its results so far.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import lipcert
from lipcert.vnncomp import VnnResult, vnnlib_check

from run_info import SHARED_DATA, machine

EXPECTED = {"holds": "unsat", "violated": "sat"}


def find_data(given: str | None) -> Path:
    for c in [given, os.environ.get("LIPCERT_DATA"), SHARED_DATA]:
        if c and (Path(c) / "models").is_dir():
            return Path(c)
    sys.exit("no shared data folder: pass --data DIR (the folder holding models/)")


def instances(data: Path) -> list[tuple[str, dict[str, str]]]:
    out = []
    for table in sorted((data / "models").glob("*/vnncomp2021_results.csv")):
        with open(table, newline="") as fh:
            out += [(table.parent.name, row) for row in csv.DictReader(fh)]
    return out


def verdict(recorded: str, status: str) -> str:
    """``solved`` (agrees with the record), ``wrong`` (unsat on a violated instance), ``new`` (a
    checked counterexample or proof where VNN-COMP 2021 recorded no decision), or ``-``."""
    if status not in ("unsat", "sat"):
        return "-"
    if recorded == "violated" and status == "unsat":
        return "wrong"
    if EXPECTED.get(recorded) == status:
        return "solved"
    return "new" if recorded not in EXPECTED else "conflict"


def skipped(res: VnnResult) -> bool:
    """No bound computed: the gradient at the centre showed no Lipschitz proof can succeed."""
    return bool(res.lipschitz.size) and bool(np.isnan(res.lipschitz).all())


def median_gap(rows: list[tuple[str, dict[str, str], VnnResult]], bench: str) -> float:
    """Median over a benchmark's instances with a computed bound of box radius / proven radius."""
    gaps = [res.radius / max(float(res.radii.min()), 1e-300) for b, _, res in rows if b == bench and not skipped(res)]
    return float(np.median(gaps)) if gaps else math.nan


def render(rows: list[tuple[str, dict[str, str], VnnResult]], args: argparse.Namespace, seconds: float,
           done: bool) -> str:
    lines = [
        "# VNN-COMP 2021 instances: lipcert as a pre-filter",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {machine()} (under load, compare timings only with each other; each model is loaded "
        f"once, outside the per-instance times); per-instance timeout {args.timeout:g} s; total "
        f"{seconds / 60:.1f} min"
        + ("" if done else " **(run in progress or interrupted)**") + ".",
        "",
        "lipcert answers `unsat` when local constants on the input box (lipcert.local with secants "
        "anchored at the box centre, valid for the pairs (x, centre); the box enclosed in the L-infinity ball of "
        "its largest half-width) times the L2 radius of the box around its "
        "centre stay below the output margins at the centre for every disjunct of the violation; `sat` when PGD "
        "inside the box (5 restarts x 50 steps) finds an input whose onnxruntime output violates the property "
        "(every counterexample is rounded to float32 inside the box and checked); otherwise `unknown`. "
        "Recorded = the VNN-COMP 2021 majority outcome in the shared data's CSV (holds = unsat, violated = sat). "
        "`wrong` would be an `unsat` on a violated instance (a soundness bug).",
        "",
        "## Summary",
        "",
        "| benchmark | instances | recorded holds / violated / undecided | lipcert unsat | lipcert sat | "
        "unknown | timeout | solved | wrong | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    benches = list(dict.fromkeys(b for b, _, _ in rows))
    for bench in benches:
        sub = [(row, res) for b, row, res in rows if b == bench]
        rec = Counter(row["vnncomp2021_result"] for row, _ in sub)
        got = Counter(res.status for _, res in sub)
        ver = Counter(verdict(row["vnncomp2021_result"], res.status) for row, res in sub)
        lines.append(f"| {bench} | {len(sub)} | {rec['holds']} / {rec['violated']} / "
                     f"{len(sub) - rec['holds'] - rec['violated']} | {got['unsat']} | {got['sat']} | {got['unknown']} | "
                     f"{got['timeout']} | {ver['solved'] + ver['new']} | {ver['wrong']} | "
                     f"{sum(res.seconds for _, res in sub):.0f} |")
    rec_all = Counter(row["vnncomp2021_result"] for _, row, _ in rows)
    got_all = Counter((row["vnncomp2021_result"], res.status) for _, row, res in rows)
    wrong = sum(verdict(row["vnncomp2021_result"], res.status) == "wrong" for _, row, res in rows)
    lines.append(f"| total | {len(rows)} | {rec_all['holds']} / {rec_all['violated']} / "
                 f"{len(rows) - rec_all['holds'] - rec_all['violated']} | "
                 f"{sum(v for (_, st), v in got_all.items() if st == 'unsat')} | "
                 f"{sum(v for (_, st), v in got_all.items() if st == 'sat')} | "
                 f"{sum(v for (_, st), v in got_all.items() if st == 'unknown')} | "
                 f"{sum(v for (_, st), v in got_all.items() if st == 'timeout')} | "
                 f"{sum(verdict(r['vnncomp2021_result'], x.status) in ('solved', 'new') for _, r, x in rows)} | "
                 f"{wrong} | {sum(res.seconds for _, _, res in rows):.0f} |")
    lines += ["", "## Findings", "",
              f"- Recorded violations: lipcert found a counterexample on {got_all[('violated', 'sat')]} of "
              f"{rec_all['violated']} (each checked with onnxruntime inside the box); the others stay `unknown`, "
              "never `unsat`.",
              f"- Recorded proofs: lipcert proved {got_all[('holds', 'unsat')]} of {rec_all['holds']}. These are "
              "L-infinity boxes on normally trained networks: a Lipschitz certificate pays the box's L2 radius "
              "(sqrt(784) or sqrt(3072) times its half-width). On "
              f"{sum(skipped(res) for _, _, res in rows)} instances the gradient norm at the centre alone already "
              "exceeds margin / radius, so no Lipschitz bound of any tightness could prove them; elsewhere the "
              "box radius is a median " + ", ".join(f"{median_gap(rows, b):.3g}x ({b})" for b in benches
                                                    if median_gap(rows, b) == median_gap(rows, b)) +
              " the radius the local constants prove. Bound propagation (CROWN and the complete verifiers of "
              "VNN-COMP) is the right tool for these properties.",
              f"- Soundness: {wrong} `unsat` answers on recorded violations; no `sat` on a recorded proof "
              f"({got_all[('holds', 'sat')]}).",
              "- As a pre-filter (vnncomp/prefilter_run_instance.sh) lipcert settles the violated instances in "
              "seconds and hands the rest over; its proofs matter on Lipschitz-trained models and L2 properties, "
              "which this benchmark set does not contain."]
    lines += ["", "## Instances", "",
              "Radius: L2 radius of the box around its centre. Best radius proven: the smallest over disjuncts of "
              "margin / Lip of its best row (a disjunct is proven when this exceeds the box radius); `skipped` "
              "when the gradient norm at the centre already shows no Lipschitz bound can succeed.",
              "",
              "| benchmark | model | property | recorded | lipcert | verdict | seconds | box radius | "
              "best radius proven | proven disjuncts |",
              "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for bench, row, res in rows:
        proven = "skipped" if skipped(res) else f"{res.radii.min():.3g}"
        lines.append(f"| {bench} | {row['onnx']} | {Path(row['vnnlib']).name} | {row['vnncomp2021_result']} | "
                     f"{res.status} | {verdict(row['vnncomp2021_result'], res.status)} | {res.seconds:.1f} | "
                     f"{res.radius:.3g} | {proven} | {int(res.proven.sum())}/{res.proven.size} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="shared data folder (default LIPCERT_DATA or ../shared/data)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per instance (default 30)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N instances of each benchmark")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vnncomp.md"))
    args = parser.parse_args()
    args.command = "python benchmarks/vnncomp.py " + shlex.join(sys.argv[1:])
    data = find_data(args.data)
    todo = instances(data)
    if args.limit is not None:
        seen: Counter[str] = Counter()
        todo = [t for t in todo if (seen.update([t[0]]) or seen[t[0]] <= args.limit)]
    start = time.perf_counter()
    nets: dict[Path, lipcert.Network] = {}
    rows = []
    for bench, row in todo:
        model = data / "models" / bench / row["onnx"]
        if model not in nets:
            nets[model] = lipcert.load(model)
        res = vnnlib_check(model, data / "models" / bench / row["vnnlib"], timeout=args.timeout, net=nets[model])
        rows.append((bench, row, res))
        print(f"{bench} {row['onnx']} {Path(row['vnnlib']).name}: {res.status} ({row['vnncomp2021_result']}) "
              f"{res.seconds:.1f} s", flush=True)
        Path(args.out).write_text(render(rows, args, time.perf_counter() - start, False), encoding="utf-8")
    Path(args.out).write_text(render(rows, args, time.perf_counter() - start, True), encoding="utf-8")


if __name__ == "__main__":
    main()
