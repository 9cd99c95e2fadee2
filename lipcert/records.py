"""Run records: fingerprints of networks and arrays, and the JSON-lines store that lets a run resume.

A records file holds one header line (the run's fingerprint: network and data hashes, norm, bounds)
and then one line per finished input, appended batch by batch; each line names its batch
(``"batch": [start, stop]``), so a run with the same fingerprint continues after its last complete
batch whatever batch size it resumes with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResumeError
from .graph import AnyNetwork
from .network import array_hash

RECORDS_VERSION = 2


def network_hash(net: AnyNetwork) -> str:
    """The network's :meth:`~lipcert.Network.fingerprint` (weights, biases, slopes, activations, input shape)."""
    return net.fingerprint()


class RecordStore:
    """A JSON-lines file: one header (the run's fingerprint), then one line per finished input."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool, batch_size: int) -> None:
        """Open ``path``: write the header of a new file, or read back the finished batches of an existing one.

        An existing file must carry the same ``header`` and ``resume`` must be set, else
        :class:`~lipcert.errors.ResumeError`; a partial last batch and a torn or malformed tail are
        dropped (and recomputed).  A version-1 file (rows without batch tags) keeps its rows in whole
        batches of ``batch_size``, as version 1 resumed, and is rewritten as version 2.
        """
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise ResumeError(f"records file {path} exists; resume the run (resume=True, --resume) "
                                  "or choose another output")
            self._read(header, batch_size)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"record": "header", **header}) + "\n")

    def _read(self, header: dict[str, Any], batch_size: int) -> None:
        with open(self.path, "rb") as fh:
            first = fh.readline()
            try:
                old = json.loads(first)
            except ValueError:
                old = None
            if not first.endswith(b"\n") or not isinstance(old, dict) or old.get("record") != "header":
                raise ResumeError(f"{self.path} does not start with a lipcert records header")
            version = old.get("version")
            if version == 1:  # version 1 had no per-method list: its bounds name the methods
                old = {**old, "version": RECORDS_VERSION, "methods": list(old.get("bounds") or {})}
            elif version != header["version"]:
                raise ResumeError(f"{self.path} was written by records version {version!r}, which this lipcert "
                                  f"(version {header['version']}) cannot resume; start the run over (--overwrite)")
            diff = sorted(k for k in set(header) | set(old) - {"record"} if old.get(k) != header.get(k))
            if diff:
                raise ResumeError(f"{self.path} belongs to another run: {', '.join(diff)} differ "
                                  "(the same model, data, norm, tolerance and methods are needed to resume)")
            ends, end = [], fh.tell()
            for line in fh:
                row = _row(line, header["methods"])
                if row is None:
                    break
                self.rows.append(row)
                ends.append(end := end + len(line))
        if version == 1:
            self._migrate(header, batch_size)
            return
        keep = complete_batches(self.rows)  # a torn last batch is redone
        self.rows = self.rows[:keep]
        with open(self.path, "r+b") as fh:
            fh.truncate(ends[keep - 1] if keep else len(first))

    def _migrate(self, header: dict[str, Any], batch_size: int) -> None:
        """Keep the version-1 rows in whole batches of ``batch_size`` and rewrite the file as version 2."""
        keep = len(self.rows) // batch_size * batch_size
        self.rows = [{**r, "batch": [i // batch_size * batch_size, (i // batch_size + 1) * batch_size]}
                     for i, r in enumerate(self.rows[:keep])]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in [{"record": "header", **header}, *self.rows]))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append the records of one finished batch and flush them to disk."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


def _row(line: bytes, methods: list[str]) -> dict[str, Any] | None:
    """A records line as a row, or None for a torn or malformed line (the end of what is kept)."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    numbers = ("index", "label", "prediction", "margin", "logit_error")
    if not (isinstance(row, dict) and all(isinstance(row.get(k), int | float) for k in numbers)
            and isinstance(row.get("radius"), dict)
            and all(isinstance(row["radius"].get(m), int | float) for m in methods)):
        return None
    return row


def complete_batches(rows: list[dict[str, Any]]) -> int:
    """How many leading rows form complete batches: row p must name a batch [start, stop) holding p,
    and every row of that batch must be present."""
    count = 0
    while count < len(rows):
        span = rows[count].get("batch")
        if not (isinstance(span, list) and len(span) == 2 and span[0] == count and span[1] > count):
            break
        stop = span[1]
        if stop > len(rows) or any(r.get("batch") != span for r in rows[count:stop]):
            break
        count = stop
    return count


def batch_rows(batch: dict[str, np.ndarray], methods: list[str], start: int) -> list[dict[str, Any]]:
    """Per-input JSON records of the batch of inputs ``start, start + 1, ...`` (floats round-trip
    exactly through JSON)."""
    cols = {k: v.tolist() for k, v in batch.items()}
    n = len(cols["index"])
    return [{"index": cols["index"][i], "label": cols["label"][i], "prediction": cols["prediction"][i],
             "margin": cols["margin"][i], "logit_error": cols["logit_error"][i],
             "radius": {m: cols[f"radius:{m}"][i] for m in methods}, "batch": [start, start + n]}
            for i in range(n)]


def record_columns(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, np.ndarray]:
    """The arrays of records read back from a records file."""
    out = {k: np.array([r[k] for r in rows]) for k in ("index", "label", "prediction", "margin", "logit_error")}
    out.update({f"radius:{m}": np.array([r["radius"][m] for r in rows], dtype=np.float64) for m in methods})
    return out
