"""Building the report.json record and the samples.csv table of one run."""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks import AttackResult, soundness_violations
from ..bounds import LipschitzBound
from ..certification import Certification
from ..errors import ReportError
from ..local.radius import LOCAL_METHOD
from ..graph import AnyNetwork
from ..norms import check_eps
from ..records import network_hash
from ..runfolder import sha256_file
from .schema import SCHEMA_VERSION

SAMPLE_COLUMNS = ("index", "label", "prediction", "margin", "radius", "logit_error")


def number(value: float) -> float | None:
    """A float for JSON: ``None`` for infinity or NaN (the schema's 'unbounded')."""
    v = float(value)
    return v if math.isfinite(v) else None


def attack_eps(result: AttackResult) -> float:
    """The single eps of an attack run at one radius for every input."""
    values = np.unique(result.eps)
    if values.size != 1:
        raise ReportError("reports take attacks run at one eps for every input (got per-input eps)")
    return float(values[0])


def model_section(network: AnyNetwork | None, model: str | Path | None) -> dict[str, Any]:
    info = dict(network.info) if network is not None else {}
    path = model if model is not None else info.get("source")
    file = Path(path) if isinstance(path, str | Path) and Path(path).is_file() else None
    out: dict[str, Any] = {
        "path": str(path) if path is not None else None,
        "sha256": sha256_file(file) if file is not None else None,
        "network_sha256": network_hash(network) if network is not None else None,
        "source": info.get("source"),
        "widths": list(network.widths) if network is not None else None,
        "activations": list(network.activation_names) if network is not None else None,
        "parameters": network.num_parameters if network is not None else None,
        "input_shape": list(network.input_shape) if network is not None else None,
        "input_range": list(network.input_range) if network is not None and network.input_range else None,
        "preprocessing": info.get("preprocessing"),
        "conversion_error": info.get("conversion_error"),
        "config": info.get("config"),
    }
    return _jsonable(out)


def dataset_section(dataset: Any, split: str | None, cert: Certification) -> dict[str, Any]:
    if dataset is None or isinstance(dataset, str | Path):
        name, total, note = (str(dataset) if dataset is not None else None), None, ""
    else:
        name, total, note = getattr(dataset, "name", None), getattr(dataset, "total", None), getattr(dataset, "note", "")
        split = split if split is not None else getattr(dataset, "split", None)
    indices = [int(cert.index.min()), int(cert.index.max())] if cert.n else None
    return {"name": name, "split": split, "total": total, "indices": indices, "note": note or ""}


def default_eps(cert: Certification) -> list[float]:
    """Ten radii up to the largest finite certified radius of a correct input (or [0] if none)."""
    r = cert.radius[cert.correct]
    r = r[np.isfinite(r)]
    top = float(r.max()) if r.size else 0.0
    return [0.0] if top == 0 else [float(v) for v in np.linspace(0, top, 11)[1:]]


def lipschitz_section(cert: Certification) -> dict[str, dict[str, Any]]:
    """Per method, the global bound behind its radii: value, winning rule, per-rule values, seconds, status.

    The local radii have no bound of their own; their entry is the best global bound, which caps every
    local constant they use, with a status that says so.
    """
    def entry(b: LipschitzBound, status: str) -> dict[str, Any]:
        return {"value": number(b.value), "rule": b.rule, "per_rule": {k: number(v) for k, v in b.per_rule.items()},
                "seconds": b.seconds, "status": status}

    out = {m: entry(b, b.status) for m, b in cert.bounds.items()}
    if LOCAL_METHOD in cert.radii and LOCAL_METHOD not in cert.bounds:
        best = min(cert.bounds.values(), key=lambda b: b.value)
        out[LOCAL_METHOD] = entry(best, f"per-input local constants on each certified ball; value: the global "
                                        f"{best.method} bound, used per pair when smaller")
    return out


def build_record(cert: Certification, *, network: AnyNetwork | None, model: str | Path | None, dataset: Any,
                 split: str | None, eps: Sequence[float] | None, attacks: Sequence[AttackResult],
                 timings: dict[str, float] | None, command: str | None) -> dict[str, Any]:
    """The report.json record (see :data:`~lipcert.report.schema.REPORT_SCHEMA`)."""
    from .. import __version__

    grid = [float(e) for e in check_eps(eps if eps is not None else default_eps(cert))]
    methods = list(cert.methods)
    certified = {m: [number(a) for a in cert.certified_accuracy(grid, m)] for m in methods}
    certified["best"] = [number(a) for a in cert.certified_accuracy(grid)]
    stats = {m: {k: number(v) for k, v in cert.radius_stats(m).items()} for m in methods + [None]}
    attack: dict[str, Any] | None = None
    if attacks:
        ordered = sorted(attacks, key=attack_eps)
        attack = {"kind": "pgd", "norm": cert.norm, "steps": ordered[0].steps, "restarts": ordered[0].restarts,
                  "eps": [attack_eps(a) for a in ordered],
                  "upper_bound": [a.robust_accuracy for a in ordered],
                  "violations": [int(soundness_violations(cert, a).size) for a in ordered],
                  "seconds": float(sum(a.seconds for a in ordered))}
    times = {**cert.timings, "certify": cert.seconds, **(timings or {})}
    if attack is not None:
        times.setdefault("attack", attack["seconds"])
    scale = "L2 radius" if cert.norm == "2" else f"L2 radius / sqrt(d) = L2 radius / sqrt({cert.input_dim})"
    return {
        "schema_version": SCHEMA_VERSION,
        "lipcert_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": model_section(network, model),
        "dataset": dataset_section(dataset, split, cert),
        "n_inputs": cert.n,
        "input_dim": cert.input_dim,
        "norm": cert.norm,
        "norm_note": (f"radii are {scale}: r(x) = min_j (f_y - f_j - tol) / L_yj with pairwise Lipschitz "
                      "constants L_yj" + ("" if cert.norm == "2" else
                                          "; valid because ||v||_2 <= sqrt(d) ||v||_inf")),
        "radius_units": "the network's input space (raw inputs, before any normalization it carries)",
        "methods": methods,
        "lipschitz": lipschitz_section(cert),
        "eps": grid,
        "clean_accuracy": cert.clean_accuracy,
        "certified_accuracy": certified,
        "attack": attack,
        "radius_stats": {(m or "best"): s for m, s in stats.items()},
        "tolerance": {"logit_error_max": number(cert.logit_error.max()) if cert.n else 0.0,
                      "extra": cert.tolerance,
                      "note": ("each margin f_y - f_j is reduced by 2x a rigorous bound on the float64 rounding "
                               "error of the logits (Higham's gamma_n analysis of every layer) plus the extra "
                               "tolerance before dividing by L_yj")},
        "timings": {k: float(v) for k, v in times.items()},
        "workers": cert.workers,
        "files": {"samples": "samples.csv", "markdown": "report.md", "html": "report.html"},
    }


def write_samples(path: Path, cert: Certification, attacks: Sequence[AttackResult]) -> None:
    """samples.csv: one row per input (index, label, prediction, margin, radius, logit_error,
    radius_<method> for every method, broken@<eps> for every attack)."""
    ordered = sorted(attacks, key=attack_eps)
    header = list(SAMPLE_COLUMNS) + [f"radius_{m}" for m in cert.methods] + \
        [f"broken@{attack_eps(a)!r}" for a in ordered]
    best = cert.radius
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(cert.n):
            w.writerow([int(cert.index[i]), int(cert.label[i]), int(cert.prediction[i]), repr(float(cert.margin[i])),
                        repr(float(best[i])), repr(float(cert.logit_error[i]))]
                       + [repr(float(cert.radii[m][i])) for m in cert.methods]
                       + [int(a.success[i]) for a in ordered])


def read_samples(path: Path) -> dict[str, np.ndarray]:
    """The columns of a samples.csv as arrays (ints for index, label, prediction; floats otherwise)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    if not rows or any(c not in rows[0] for c in SAMPLE_COLUMNS):
        raise ReportError(f"{path} lacks the columns {', '.join(SAMPLE_COLUMNS)}")
    header, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(header):
        kind = np.int64 if name in ("index", "label", "prediction") else np.float64
        try:
            out[name] = np.array([r[j] for r in body], dtype=kind)
        except (ValueError, IndexError) as exc:
            raise ReportError(f"{path}: column {name!r} is malformed: {exc}") from exc
    return out


def check_samples(folder: Path, record: dict[str, Any], samples: dict[str, np.ndarray],
                  manifest: dict[str, Any]) -> None:
    """Refuse (ReportError) samples that disagree with their report.json and manifest: row count,
    distinct indices inside the record's index range, a radius column per method, the network."""
    n = record["n_inputs"]
    rows = samples["index"].shape[0]
    if rows != n or manifest.get("n_inputs", n) != n:
        raise ReportError(f"{folder}: samples.csv holds {rows} rows but the run certified {n} inputs "
                          f"(manifest: {manifest.get('n_inputs')}); the run is incomplete or was edited")
    if np.unique(samples["index"]).size != rows:
        raise ReportError(f"{folder}: samples.csv repeats input indices")
    span = record["dataset"].get("indices")
    if rows and span is not None and (samples["index"].min() < span[0] or samples["index"].max() > span[1]):
        raise ReportError(f"{folder}: samples.csv indices leave the run's range {span[0]}..{span[1]}")
    missing = [m for m in record["methods"] if f"radius_{m}" not in samples]
    if missing or list(manifest.get("methods", record["methods"])) != list(record["methods"]):
        raise ReportError(f"{folder}: the methods of report.json ({', '.join(record['methods'])}) do not match "
                          f"samples.csv and the manifest (missing columns: {', '.join(missing) or 'none'})")
    if manifest.get("network") != record["model"].get("network_sha256"):
        raise ReportError(f"{folder}: report.json and the manifest name different networks")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return number(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)
