"""The lipcert-versus-verifier comparison report (``lipcert compare``): comparison.json, report.md, report.html.

The record (``kind: "verifier-comparison"``) holds, per eps: certified accuracy of every
lipcert method and every verifier, the agreement of lipcert's best radius with each verifier
(both / only lipcert / only the verifier / neither), time per input, the PGD upper bound with
its soundness check for both tools, and for ``--strategy lipschitz-first`` the union with its
provenance and the verifier time it saved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .render import Section, eps_label, html_page, markdown, norm_name, num, pct
from .schema import SCHEMA_VERSION

KIND = "verifier-comparison"

#: Fields of comparison.json beyond those copied from the lipcert run (model, dataset, ...).
COMPARISON_SCHEMA: dict[str, str] = {
    "kind": "str: 'verifier-comparison'",
    "strategy": "str: 'all' (every verifier on every input) or 'lipschitz-first' (verifiers on what lipcert left)",
    "eps": "list[float]: the radii, in norm, raw input units",
    "lipcert": ("object: run_dir (str), methods (list[str]), certified_accuracy (method and 'best' -> list per eps), "
                "seconds (object: bound seconds per method, radii seconds), seconds_per_input (float, all of it / n)"),
    "verifiers": ("object: name -> {certified_accuracy (list per eps, over the inputs it ran on counted against "
                  "all n), seconds_per_input (list per eps, over the inputs it ran on), inputs_run (list per eps)}"),
    "agreement": ("object: verifier -> list per eps of {both, only_lipcert, only_verifier, neither} counts "
                  "(strategy 'all' only)"),
    "combined": ("object: verifier -> {certified_accuracy, by_lipcert, by_verifier (lists per eps, shares of n), "
                 "total_seconds, verifier_alone_seconds (measured or estimated), time_saved (lists per eps)}"),
    "attack": ("object or null: eps, upper_bound (lists), violations (tool -> list per eps of inputs certified "
               "yet broken: must be 0)"),
    "radius": ("object or null: verifier, steps, calls, median (float), seconds_per_input, lipcert_median: "
               "certified radii by bisection on eps"),
}


def agreement(lip: np.ndarray, ver: np.ndarray) -> dict[str, int]:
    """Counts of inputs certified by both, only lipcert, only the verifier, neither."""
    return {"both": int((lip & ver).sum()), "only_lipcert": int((lip & ~ver).sum()),
            "only_verifier": int((~lip & ver).sum()), "neither": int((~lip & ~ver).sum())}


def sections(rec: dict[str, Any]) -> list[Section]:
    """Setup, certified accuracy side by side, agreement, combined strategy, timings, notes."""
    eps = rec["eps"]
    cols = tuple(f"eps={eps_label(e)} (%)" for e in eps)
    model, data = rec["model"], rec["dataset"]
    setup = (("model", str(model.get("path"))), ("data set", f"{data.get('name')} ({data.get('split') or 'n/a'})"),
             ("inputs", str(rec["n_inputs"])), ("norm", norm_name(rec["norm"])), ("strategy", rec["strategy"]),
             ("lipcert run", rec["lipcert"]["run_dir"]), ("lipcert", rec["lipcert_version"]))
    lip = rec["lipcert"]
    rows = [(f"lipcert {m}", pct(rec["clean_accuracy"])) + tuple(pct(a) for a in lip["certified_accuracy"][m])
            for m in lip["methods"]]
    for name, v in rec["verifiers"].items():
        label = name if rec["strategy"] == "all" else f"{name} (on inputs lipcert left)"
        rows.append((label, pct(rec["clean_accuracy"])) + tuple(pct(a) for a in v["certified_accuracy"]))
    for name, c in rec["combined"].items():
        rows.append((f"lipcert, then {name}", pct(rec["clean_accuracy"])) + tuple(pct(a) for a in c["certified_accuracy"]))
    att = rec.get("attack")
    if att:
        upper = dict(zip(att["eps"], att["upper_bound"]))
        rows.append(("PGD upper bound", pct(rec["clean_accuracy"])) + tuple(pct(upper.get(e)) for e in eps))
    out = [Section("Setup", ("field", "value"), setup),
           Section(f"Certified accuracy ({norm_name(rec['norm'])})", ("method", "clean (%)") + cols, tuple(rows))]
    if rec["agreement"]:
        body: tuple[tuple[str, ...], ...] = tuple(
            (name, eps_label(e), str(a["both"]), str(a["only_lipcert"]), str(a["only_verifier"]), str(a["neither"]))
            for name, per in rec["agreement"].items() for e, a in zip(eps, per))
        out.append(Section("Agreement (lipcert best radius vs verifier)",
                           ("verifier", "eps", "both", "only lipcert", "only verifier", "neither"), body))
    if rec["combined"]:
        body = tuple((name, eps_label(e), pct(c["certified_accuracy"][i]), pct(c["by_lipcert"][i]),
                      pct(c["by_verifier"][i]), f"{c['total_seconds'][i]:.3g}", f"{c['verifier_alone_seconds'][i]:.3g}",
                      f"{c['time_saved'][i]:.3g}")
                     for name, c in rec["combined"].items() for i, e in enumerate(eps))
        out.append(Section("Lipschitz first, then the verifier",
                           ("verifier", "eps", "certified (%)", "by lipcert (%)", "by verifier (%)", "total (s)",
                            "verifier alone (s)", "saved (s)"), body))
    timing = [("lipcert (bound + radii, all eps)", f"{1e3 * lip['seconds_per_input']:.3g}")]
    timing += [(f"{name} at eps={eps_label(e)}", "" if s is None else f"{1e3 * s:.3g}")
               for name, v in rec["verifiers"].items() for e, s in zip(eps, v["seconds_per_input"])]
    out.append(Section("Time per input", ("tool", "ms per input"), tuple(timing)))
    rad = rec.get("radius")
    if rad:
        out.append(Section("Certified radii (median over inputs)", ("tool", "median radius", "ms per input"),
                           ((f"{rad['verifier']} (bisection, {rad['steps']} steps)", num(rad["median"]),
                             f"{1e3 * rad['seconds_per_input']:.3g}"),
                            ("lipcert (best method)", num(rad["lipcert_median"]), ""))))
    notes = ["Both tools certify the same property: every input in the whole norm ball of radius eps around x "
             "(no clipping to the input range) keeps the true class; the verifier uses the margin specification "
             "C = e_y - e_j for every other class j, in float64.",
             "Certified accuracy is a share of all inputs. lipcert's time includes its one-off Lipschitz bound "
             "spread over the inputs."]
    if att:
        bad = {tool: sum(v) for tool, v in att["violations"].items()}
        notes.append("Attack: " + ("no input certified by either tool was broken (consistent)." if not any(bad.values())
                                   else f"WARNING: inputs certified yet broken: {bad}."))
    notes.append("Timings were taken on a shared machine; compare them as ratios within one run.")
    out.append(Section("Notes", text=tuple(notes)))
    return out


def write_comparison(out_dir: str | Path, record: dict[str, Any], samples: dict[str, Sequence[Any]]
                     ) -> dict[str, Path]:
    """Write comparison.json, comparison_samples.csv, report.md and report.html into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"schema_version": SCHEMA_VERSION, "kind": KIND, **record}
    files = {"json": out / "comparison.json", "samples": out / "comparison_samples.csv",
             "markdown": out / "report.md", "html": out / "report.html"}
    title = f"lipcert vs {', '.join(record['verifiers'])}: {Path(str(record['model']['path'])).name}"
    secs = sections(record)
    header = list(samples)
    lines = [",".join(header)] + [",".join(_cell(v) for v in row) for row in zip(*samples.values())]
    texts = {"json": json.dumps(record, indent=2, allow_nan=False) + "\n", "samples": "\n".join(lines) + "\n",
             "markdown": markdown(title, secs), "html": html_page(title, secs, [], None)}
    for key, path in files.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(texts[key], encoding="utf-8")
        os.replace(tmp, path)
    return files


def _cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)
