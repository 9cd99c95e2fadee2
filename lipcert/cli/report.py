"""``lipcert report RUN_DIR... --out DIR``: one comparison report of several certification runs."""

from __future__ import annotations

import argparse

from .common import floats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare certification runs (methods, models) in one report",
                       description="Reads the report.json and samples.csv of every run folder and writes "
                                   "comparison.json, report.md and report.html into --out.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by 'lipcert certify'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--eps", type=floats, default=None, help="radii of the table (default: union of the runs' eps)")
    p.add_argument("--no-plots", action="store_true", help="HTML report without plots")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import compare_runs

    result = compare_runs(args.runs, args.out, eps=args.eps, plots=not args.no_plots)
    for table in result.record["tables"]:
        print(f"norm L{'2' if table['norm'] == '2' else '-inf'}: {len(table['rows'])} rows, "
              f"eps {', '.join(format(e, '.4g') for e in table['eps'])}")
    print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0
