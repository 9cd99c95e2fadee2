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
              "preprocessing (object|null), conversion_error (float|null), config (str|null, the verifier config "
              "(alpha-beta-CROWN YAML) the run was read from)"),
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


def _is_num(v: Any, optional: bool = False) -> bool:
    return (v is None and optional) or (isinstance(v, int | float) and not isinstance(v, bool))


def _need(ok: bool, field: str, what: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        raise ReportError(f"report field {field} must be {what}, got {shown[:60]}{'...' if len(shown) > 60 else ''}")


def validate_record(record: Any) -> None:
    """Raise :class:`ReportError` unless ``record`` has every field of :data:`REPORT_SCHEMA`, with the
    types that readers (``lipcert report``) rely on, and a bound for every method."""
    _need(isinstance(record, dict), "(top level)", "a JSON object", record)
    missing = [k for k in REPORT_SCHEMA if k not in record and k not in OPTIONAL_FIELDS]
    if missing:
        raise ReportError(f"report is missing the fields {', '.join(missing)}")
    version = record["schema_version"]
    if version != SCHEMA_VERSION:
        raise ReportError(f"report has schema_version {version!r}; this lipcert reads version {SCHEMA_VERSION}")
    _need(record["norm"] in ("2", "inf"), "norm", "'2' or 'inf'", record["norm"])
    _need(isinstance(record["n_inputs"], int) and not isinstance(record["n_inputs"], bool)
          and record["n_inputs"] >= 0, "n_inputs", "an integer >= 0", record["n_inputs"])
    _need(_is_num(record["clean_accuracy"]), "clean_accuracy", "a number", record["clean_accuracy"])
    _need(isinstance(record["model"], dict), "model", "an object", record["model"])
    _need(isinstance(record["dataset"], dict), "dataset", "an object", record["dataset"])
    eps = record["eps"]
    _need(isinstance(eps, list) and all(_is_num(e) for e in eps), "eps", "a list of numbers", eps)
    methods = record["methods"]
    _need(isinstance(methods, list) and bool(methods) and all(isinstance(m, str) for m in methods),
          "methods", "a non-empty list of method names", methods)
    for name in ("lipschitz", "certified_accuracy", "radius_stats"):
        _need(isinstance(record[name], dict), name, "an object", record[name])
    for m in methods:
        bound = record["lipschitz"].get(m)
        _need(isinstance(bound, dict) and _is_num(bound.get("value"), optional=True),
              f"lipschitz[{m!r}]", "an object with a numeric 'value' (every method needs its bound)", bound)
        stats = record["radius_stats"].get(m)
        _need(isinstance(stats, dict) and _is_num(stats.get("median"), optional=True),
              f"radius_stats[{m!r}]", "an object with a numeric 'median'", stats)
    for method, accs in record["certified_accuracy"].items():
        _need(isinstance(accs, list) and all(_is_num(a, optional=True) for a in accs),
              f"certified_accuracy[{method!r}]", "a list of numbers", accs)
        if len(accs) != len(eps):
            raise ReportError(f"certified_accuracy[{method!r}] has {len(accs)} values for {len(eps)} eps")
    attack = record["attack"]
    if attack is not None:
        _need(isinstance(attack, dict) and isinstance(attack.get("eps"), list)
              and isinstance(attack.get("upper_bound"), list)
              and len(attack["eps"]) == len(attack["upper_bound"])
              and all(_is_num(v) for v in attack["eps"] + attack["upper_bound"]),
              "attack", "null or an object with equally long lists eps and upper_bound", attack)
