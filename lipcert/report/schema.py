"""The documented, versioned schema of ``report.json`` (one record per certification run).

Every number is stored as a JSON number (never a formatted string); a radius or accuracy that
is unbounded is written as ``null``.  Readers should check ``schema_version`` first.
"""

from __future__ import annotations

from typing import Any

from ..errors import ReportError

SCHEMA_VERSION = 1

#: Every top-level field of report.json with its meaning.  Nested objects list their keys.
REPORT_SCHEMA: dict[str, str] = {
    "schema_version": "int: version of this schema (1); bumped on any incompatible change",
    "lipcert_version": "str: version of lipcert that wrote the report",
    "created": "str: ISO 8601 UTC time at which the report was written",
    "command": "str or null: the command line that produced the run",
    "model": ("object: path (str|null, the model file), sha256 (str|null, sha256 of the model file), "
              "network_sha256 (str|null, sha256 of the float64 weights certified), source, widths (list[int]), "
              "activations (list[str]), parameters (int), input_shape (list[int]), input_range ([lo, hi]|null), "
              "preprocessing (object|null), conversion_error (float|null)"),
    "dataset": ("object: name (str|null), split (str|null), total (int|null, inputs the source holds), "
                "indices ([first, last]|null), note (str)"),
    "n_inputs": "int: number of inputs certified",
    "input_dim": "int: input dimension d",
    "norm": "str: '2' or 'inf', the norm of every radius and eps in the report",
    "norm_note": "str: how the radii were obtained (L-inf radius = L2 radius / sqrt(d))",
    "radius_units": "str: the space radii are measured in (the network's raw input space)",
    "methods": "list[str]: Lipschitz bound methods, in the order run",
    "lipschitz": ("object: method -> {value (float, bound on Lip_2(f)), rule (str|null), per_rule "
                  "(object str -> float), seconds (float), status (str)}"),
    "eps": "list[float]: the radii at which accuracies are reported",
    "clean_accuracy": "float: share of inputs classified correctly (float64 argmax)",
    "certified_accuracy": ("object: method -> list[float|null] (one per eps): share of inputs correct and "
                           "certified at eps; 'best' uses the per-input maximum radius over methods"),
    "attack": ("object or null: kind ('pgd'), norm, steps, restarts, eps (list[float]), upper_bound "
               "(list[float], share of inputs not broken, an upper bound on robust accuracy), violations "
               "(list[int], inputs both certified and broken: must be 0), seconds"),
    "radius_stats": ("object: method (and 'best') -> {mean, median, max, positive}: radius statistics over "
                     "correctly classified inputs; 'positive' is the share with a radius > 0"),
    "tolerance": ("object: logit_error_max (float, largest bound on a logit's rounding error plus the extra "
                  "tolerance), extra (float, the extra absolute tolerance), note (str)"),
    "timings": ("object: seconds spent: bound:<method> per bound, radii (forward passes and radii), "
                "certify (wall time of the certification), attack (when run), total (when known)"),
    "workers": "int: Dask workers that computed the radii, 0 when computed in the certifying process (optional)",
    "files": "object: name -> file name of the other outputs of the run (samples.csv, report.md, report.html)",
}

OPTIONAL_FIELDS = ("workers",)
"""Fields of :data:`REPORT_SCHEMA` that reports written before they existed lack."""


def validate_record(record: dict[str, Any]) -> None:
    """Raise :class:`ReportError` unless ``record`` has every field of :data:`REPORT_SCHEMA`."""
    missing = [k for k in REPORT_SCHEMA if k not in record and k not in OPTIONAL_FIELDS]
    if missing:
        raise ReportError(f"report is missing the fields {', '.join(missing)}")
    version = record["schema_version"]
    if version != SCHEMA_VERSION:
        raise ReportError(f"report has schema_version {version!r}; this lipcert reads version {SCHEMA_VERSION}")
    n_eps = len(record["eps"])
    for method, accs in record["certified_accuracy"].items():
        if len(accs) != n_eps:
            raise ReportError(f"certified_accuracy[{method!r}] has {len(accs)} values for {n_eps} eps")
