"""Markdown and self-contained HTML renderings of report records (tables first, plots optional)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PLOT_NOTE = ("No plots: matplotlib, a dependency of lipcert, could not be imported here (pip install matplotlib); "
             "the tables are complete.")


@dataclass(frozen=True)
class Section:
    """A titled table (headers and rows of cells) and/or paragraphs of text."""

    title: str
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    text: tuple[str, ...] = field(default_factory=tuple)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def num(value: float | None, digits: int = 4) -> str:
    return "inf" if value is None else f"{value:.{digits}g}"


def eps_label(e: float) -> str:
    """``0.5`` -> "0.5", ``36/255`` -> "36/255", else 4 significant digits."""
    short = f"{e:g}"
    k = e * 255
    if len(short) > 6 and abs(k - round(k)) < 1e-9:
        return f"{round(k)}/255"
    return f"{e:.4g}"


def norm_name(norm: str) -> str:
    return "L2" if norm == "2" else "L-inf"


def run_sections(rec: dict[str, Any]) -> list[Section]:
    """Setup, certified accuracy, Lipschitz bounds, radius statistics and notes of one run."""
    model, data = rec["model"], rec["dataset"]
    setup = [("model", str(model.get("path"))), ("model sha256", str(model.get("sha256"))),
             ("architecture", " - ".join(map(str, model.get("widths") or [])) or "n/a"),
             ("data set", f"{data.get('name')} ({data.get('split') or 'n/a'})"),
             ("inputs", str(rec["n_inputs"])), ("norm", norm_name(rec["norm"])),
             ("methods", ", ".join(rec["methods"])), ("lipcert", rec["lipcert_version"])]
    if model.get("config"):
        setup.insert(1, ("config", str(model["config"])))
    eps = rec["eps"]
    headers = ("method", "Lipschitz bound", "clean (%)") + tuple(f"eps={eps_label(e)} (%)" for e in eps)
    rows = []
    for m in rec["methods"]:
        rows.append((m, num(rec["lipschitz"][m]["value"]), pct(rec["clean_accuracy"]))
                    + tuple(pct(a) for a in rec["certified_accuracy"][m]))
    if len(rec["methods"]) > 1:
        rows.append(("best of all", "", pct(rec["clean_accuracy"]))
                    + tuple(pct(a) for a in rec["certified_accuracy"]["best"]))
    attack = rec.get("attack")
    if attack:
        upper = dict(zip(attack["eps"], attack["upper_bound"]))
        rows.append((f"PGD upper bound ({attack['steps']} steps x {attack['restarts']})", "", pct(rec["clean_accuracy"]))
                    + tuple(pct(upper[e]) if e in upper else "" for e in eps))
    bounds = tuple((m, num(b["value"], 6), str(b["rule"]), f"{b['seconds']:.3g}", b["status"])
                   for m, b in rec["lipschitz"].items())
    stats = tuple((m, num(s["mean"]), num(s["median"]), num(s["max"]), pct(s["positive"]))
                  for m, s in rec["radius_stats"].items() if m != "best" or len(rec["methods"]) > 1)
    notes = [f"Radii: {rec['norm_note']}; measured in {rec['radius_units']}.",
             f"Floating point: {rec['tolerance']['note']} (largest logit error bound "
             f"{num(rec['tolerance']['logit_error_max'], 3)}).",
             "Certified accuracy: share of all inputs that are correctly classified with a certified radius >= eps."]
    if attack:
        bad = sum(attack["violations"])
        notes.append(f"Attack: PGD with {attack['restarts']} restarts of {attack['steps']} steps; every success is "
                     "verified in float64 inside the eps-ball and the input range. "
                     + ("No input was both certified and broken (consistent)." if bad == 0 else
                        f"WARNING: {bad} inputs were both certified and broken: a certified radius is wrong."))
    if data.get("note"):
        notes.append(f"Data: {data['note']}")
    timing = ", ".join(f"{k} {v:.3g} s" for k, v in rec["timings"].items())
    where = f" on {rec['workers']} Dask workers" if rec.get("workers") else ""
    notes.append(f"Timings{where}: {timing}.")
    return [Section("Setup", ("field", "value"), tuple(setup)),
            Section(f"Certified accuracy ({norm_name(rec['norm'])})", headers, tuple(rows)),
            Section("Lipschitz bounds", ("method", "bound on Lip_2(f)", "rule", "seconds", "status"), bounds),
            Section("Certified radii of correctly classified inputs",
                    ("method", "mean", "median", "max", "radius > 0 (%)"), stats),
            Section("Notes", text=tuple(notes))]


def comparison_sections(norm: str, eps: Sequence[float], rows: Sequence[dict[str, Any]]) -> list[Section]:
    """One table for runs of one norm: a row per (run, method) with certified accuracy at every eps."""
    headers = ("run", "model", "method", "inputs", "Lipschitz bound", "clean (%)") + \
        tuple(f"eps={eps_label(e)} (%)" for e in eps) + ("median radius",)
    def opt(value: float | None) -> str:
        return "" if value is None else num(value)

    body = tuple((r["run"], r["model"], r["method"], str(r["n"]), opt(r["lipschitz"]), pct(r["clean"]))
                 + tuple(pct(a) if a is not None else "" for a in r["certified"]) + (opt(r["median"]),)
                 for r in rows)
    return [Section(f"Certified accuracy ({norm_name(norm)})", headers, body)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.headers:
            out.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(s.headers))) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            out.append("")
        out += [f"- {t}" for t in s.text]
        if s.text:
            out.append("")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
        ".note{color:#8a4b00}img{max-width:100%}")


def html_page(title: str, sections: Sequence[Section], plots: Sequence[tuple[str, str]], plot_note: str | None) -> str:
    """A self-contained page: tables, then the PNG plots inlined as base64 data URIs."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        if s.headers:
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.headers) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.rows]
            out.append("</tbody></table>")
        if s.text:
            out.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in s.text) + "</ul>")
    if plots or plot_note:
        out.append("<h2>Plots</h2>")
    if plot_note:
        out.append(f"<p class='note'>{e(plot_note)}</p>")
    for caption, png in plots:
        out.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{png}'>"
                   f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
