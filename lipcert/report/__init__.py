"""Reports of certification runs: report.json, samples.csv, report.md and a self-contained report.html.

>>> from lipcert.report import write_run          # doctest: +SKIP
>>> write_run("runs/x", cert, network=net, model="model.onnx", dataset="mnist", eps=[0.5, 1.0])

:func:`write_run` writes the four files of one run; :func:`compare_runs` puts several run folders
(methods, models) into one comparison report.  The JSON schema is :data:`REPORT_SCHEMA`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks import AttackResult
from ..certification import Certification
from ..errors import ReportError
from ..graph import AnyNetwork
from ..norms import check_eps
from . import plots as _plots
from ..runfolder import MANIFEST, RUN_FILES, check_manifest, check_output_folder, write_manifest
from .record import SAMPLE_COLUMNS, attack_eps, build_record, check_samples, read_samples, write_samples
from .render import PLOT_NOTE, comparison_sections, html_page, markdown, run_sections
from .schema import REPORT_SCHEMA, SCHEMA_VERSION, validate_record

__all__ = ["REPORT_SCHEMA", "SAMPLE_COLUMNS", "SCHEMA_VERSION", "ComparisonReport", "ReportError", "RunReport",
           "compare_runs", "read_run", "validate_record", "write_run"]


@dataclass(frozen=True, eq=False)
class RunReport:
    """The files of one run and the record written to report.json.

    Attributes
    ----------
    out_dir : Path
    record : dict
        The content of report.json (fields: :data:`REPORT_SCHEMA`).
    files : dict of str to Path
        ``"json"``, ``"samples"``, ``"markdown"``, ``"html"``.
    """

    out_dir: Path
    record: dict[str, Any]
    files: dict[str, Path]


@dataclass(frozen=True, eq=False)
class ComparisonReport:
    """The comparison of several runs: comparison.json's content and the files written."""

    out_dir: Path
    record: dict[str, Any]
    files: dict[str, Path]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _curve_plots(curves: list[_plots.Curve], eps_max: float, norm: str, suffix: str = "") -> list[tuple[str, str]]:
    return [(f"Certified accuracy against eps{suffix}", _plots.accuracy_plot(curves, eps_max, norm)),
            (f"Histogram of certified radii{suffix}", _plots.histogram_plot(curves, norm))]


def write_run(
    out_dir: str | Path,
    certification: Certification,
    *,
    network: AnyNetwork | None = None,
    model: str | Path | None = None,
    dataset: Any = None,
    split: str | None = None,
    eps: Sequence[float] | None = None,
    attack: AttackResult | Sequence[AttackResult] | None = None,
    timings: dict[str, float] | None = None,
    command: str | None = None,
    plots: bool = True,
) -> RunReport:
    """Write report.json, samples.csv, report.md and report.html of one run into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Folder (created if needed).
    certification : Certification
        The result of :func:`lipcert.certify`.
    network : Network, optional
        The network certified (architecture, weight hash and provenance for the report).
    model : path, optional
        The model file; its sha256 goes into the report (default: ``network.info['source']``).
    dataset : str or lipcert.datasets.Dataset, optional
        Data set name, or the loaded data set (name, split, total and note are read from it).
    split : str, optional
        Data set split, when ``dataset`` is a name.
    eps : list of float, optional
        Radii for the accuracy tables (default: the attacked radii, else ten up to the largest radius).
    attack : AttackResult or list of them, optional
        Attacks at one eps each (:func:`lipcert.attack`); reported as upper bounds beside the
        certified accuracy, with the soundness check.
    timings : dict, optional
        Extra timings in seconds (e.g. ``{"total": ...}``).
    command : str, optional
        The command line, recorded for reproduction.
    plots : bool
        Draw plots into report.html (if matplotlib does not import, the page says so instead).

    Returns
    -------
    RunReport
    """
    check_output_folder(out_dir, accept=("missing", "empty", "run"))
    out = Path(out_dir)
    if network is not None:
        fingerprint = network.fingerprint()
        for bound in certification.bounds.values():
            bound.require_network(fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the run is open until its reports are rewritten
    attacks = [] if attack is None else [attack] if isinstance(attack, AttackResult) else list(attack)
    if eps is None and attacks:
        eps = sorted({attack_eps(a) for a in attacks})
    record = build_record(certification, network=network, model=model, dataset=dataset, split=split, eps=eps,
                          attacks=attacks, timings=timings, command=command)
    files = {"json": out / "report.json", "samples": out / "samples.csv", "markdown": out / "report.md",
             "html": out / "report.html"}
    tmp = files["samples"].with_name("samples.csv.tmp")
    write_samples(tmp, certification, attacks)
    os.replace(tmp, files["samples"])
    _write_text(files["json"], json.dumps(record, indent=2, allow_nan=False) + "\n")
    title = f"lipcert certification: {Path(str(record['model']['path'] or 'model')).name} on {record['dataset']['name']}"
    sections = run_sections(record)
    _write_text(files["markdown"], markdown(title, sections))
    figures: list[tuple[str, str]] = []
    note = None
    if plots and _plots.available():
        ordered = sorted(attacks, key=attack_eps)
        curves = [_plots.Curve(m, certification.radii[m], certification.correct, certification.clean_accuracy,
                               tuple(attack_eps(a) for a in ordered) if i == 0 else (),
                               tuple(a.robust_accuracy for a in ordered) if i == 0 else ())
                  for i, m in enumerate(certification.methods)]
        figures = _curve_plots(curves, _eps_max(record["eps"], [c.radii[c.correct] for c in curves]), record["norm"])
    elif plots:
        note = PLOT_NOTE
    _write_text(files["html"], html_page(title, sections, figures, note))
    write_manifest(out, [name for name in RUN_FILES if name != MANIFEST],
                   {"n_inputs": certification.n, "methods": list(certification.methods),
                    "network": record["model"]["network_sha256"]})
    return RunReport(out, record, files)


def _eps_max(eps: Sequence[float], radii: Sequence[np.ndarray]) -> float:
    finite = [float(np.max(r[np.isfinite(r)])) for r in radii if np.isfinite(r).any()]
    top = max([*eps, *finite, 0.0])
    return top * 1.05 if top > 0 else 1.0


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report.json record and the samples.csv columns of a finished run folder, validated.

    Refused (:class:`~lipcert.errors.ReportError`): a folder that is no run, an unfinished run (no
    manifest), a file changed after the run finished (sha256 against the manifest), a record outside
    the schema, samples whose rows, indices or method columns disagree with the record.
    """
    d = Path(run_dir)
    path = d / "report.json"
    if not d.is_dir() or not path.is_file():
        raise ReportError(f"{d} is not a lipcert run folder: {path.name} is missing")
    manifest = check_manifest(d)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    validate_record(record)
    samples = read_samples(d / "samples.csv")
    check_samples(d, record, samples, manifest)
    return record, samples


def _labels(dirs: Sequence[Path]) -> list[str]:
    names = [d.name or str(d) for d in dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names)]


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, *, eps: Sequence[float] | None = None,
                 plots: bool = True) -> ComparisonReport:
    """One report comparing several runs: a row per (run, method), certified accuracy at common eps.

    Accuracies are recomputed from each run's samples.csv radii, so runs certified at different
    eps still line up on one grid (default: the union of the runs' eps).  Runs of different norms
    get separate tables.  Writes comparison.json, report.md and report.html into ``out_dir``.
    """
    if not run_dirs:
        raise ReportError("no run folders to compare")
    dirs = [Path(d) for d in run_dirs]
    check_output_folder(out_dir, accept=("missing", "empty", "comparison", "sweep"))
    out = Path(out_dir)
    runs = [(label, *read_run(d)) for label, d in zip(_labels(dirs), dirs)]
    out.mkdir(parents=True, exist_ok=True)
    sections, figures, tables = [], [], []
    for norm in sorted({rec["norm"] for _, rec, _ in runs}):
        group = [(label, rec, s) for label, rec, s in runs if rec["norm"] == norm]
        grid = [float(e) for e in check_eps(eps)] if eps is not None else \
            sorted({float(e) for _, rec, _ in group for e in rec["eps"]})
        rows, curves = [], []
        for label, rec, s in group:
            correct = s["prediction"] == s["label"]
            for i, m in enumerate(rec["methods"]):
                radii = s.get(f"radius_{m}", s["radius"])
                r = np.where(correct, radii, -np.inf)
                acc = [float((r >= e).mean()) if r.size else None for e in grid]
                rows.append({"run": label, "model": Path(str(rec["model"]["path"])).name, "method": m,
                             "n": rec["n_inputs"], "lipschitz": rec["lipschitz"][m]["value"],
                             "clean": rec["clean_accuracy"], "certified": acc,
                             "median": rec["radius_stats"][m]["median"]})
                att = rec.get("attack") or {}
                curves.append(_plots.Curve(f"{label}: {m}", radii, correct, rec["clean_accuracy"],
                                           tuple(att.get("eps", ())) if i == 0 else (),
                                           tuple(att.get("upper_bound", ())) if i == 0 else (),
                                           f"{label}: PGD upper bound"))
            att = rec.get("attack")
            if att:
                upper = dict(zip(att["eps"], att["upper_bound"]))
                rows.append({"run": label, "model": Path(str(rec["model"]["path"])).name, "method": "PGD upper bound",
                             "n": rec["n_inputs"], "lipschitz": None, "clean": rec["clean_accuracy"],
                             "certified": [upper.get(e) for e in grid], "median": None})
        tables.append({"norm": norm, "eps": grid, "rows": rows})
        sections += comparison_sections(norm, grid, rows)
        if plots and _plots.available():
            suffix = f" ({'L2' if norm == '2' else 'L-inf'})"
            figures += _curve_plots(curves, _eps_max(grid, [c.radii[c.correct] for c in curves]), norm, suffix)
    record = {"schema_version": SCHEMA_VERSION, "kind": "comparison",
              "runs": [{"label": label, "dir": str(d), "report": rec} for (label, rec, _), d in zip(runs, dirs)],
              "tables": tables}
    files = {"json": out / "comparison.json", "markdown": out / "report.md", "html": out / "report.html"}
    _write_text(files["json"], json.dumps(record, indent=2, allow_nan=False) + "\n")
    title = f"lipcert comparison of {len(runs)} runs"
    _write_text(files["markdown"], markdown(title, sections))
    note = PLOT_NOTE if plots and not _plots.available() else None
    _write_text(files["html"], html_page(title, sections, figures, note))
    return ComparisonReport(out, record, files)
