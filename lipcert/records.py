"""Run records: fingerprints of networks and arrays, and the JSON-lines store that lets a run resume.

A records file holds one header line (the run's fingerprint: network and data hashes, norm, bounds)
and then one line per finished input, appended batch by batch; a run with the same fingerprint
continues from its last complete batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResumeError
from .network import Network, array_hash

RECORDS_VERSION = 1


def network_hash(net: Network) -> str:
    """The network's :meth:`~lipcert.Network.fingerprint` (weights, biases, slopes, activations, input shape)."""
    return net.fingerprint()


class RecordStore:
    """A JSON-lines file: one header (the run's fingerprint), then one line per finished input."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool, batch_size: int) -> None:
        """Open ``path``: write the header of a new file, or read back the finished batches of an existing one.

        An existing file must carry the same ``header`` and ``resume`` must be set, else
        :class:`~lipcert.errors.ResumeError`; a partial last batch and a torn last line are dropped.
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
        good_end = 0
        with open(self.path, "rb") as fh:
            first = fh.readline()
            try:
                old = json.loads(first)
            except ValueError:
                raise ResumeError(f"{self.path} does not start with a lipcert records header") from None
            if not first.endswith(b"\n") or old.get("record") != "header":
                raise ResumeError(f"{self.path} does not start with a lipcert records header")
            diff = sorted(k for k in set(header) | set(old) - {"record"} if old.get(k) != header.get(k))
            if diff:
                raise ResumeError(f"{self.path} belongs to another run: {', '.join(diff)} differ "
                                  "(same model, data, norm, methods and bounds are needed to resume)")
            good_end = fh.tell()
            ends = []
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    break
                self.rows.append(row)
                ends.append(good_end := good_end + len(line))
        keep = len(self.rows) // batch_size * batch_size  # redo a partial batch: same batches, same bits
        self.rows = self.rows[:keep]
        end = ends[keep - 1] if keep else len(first)
        with open(self.path, "r+b") as fh:
            fh.truncate(end)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append the records of one finished batch and flush them to disk."""
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


def batch_rows(batch: dict[str, np.ndarray], methods: list[str]) -> list[dict[str, Any]]:
    """Per-input JSON records of a batch (floats round-trip exactly through JSON)."""
    cols = {k: v.tolist() for k, v in batch.items()}
    return [{"index": cols["index"][i], "label": cols["label"][i], "prediction": cols["prediction"][i],
             "margin": cols["margin"][i], "logit_error": cols["logit_error"][i],
             "radius": {m: cols[f"radius:{m}"][i] for m in methods}} for i in range(len(cols["index"]))]


def record_columns(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, np.ndarray]:
    """The arrays of records read back from a records file."""
    out = {k: np.array([r[k] for r in rows]) for k in ("index", "label", "prediction", "margin", "logit_error")}
    out.update({f"radius:{m}": np.array([r["radius"][m] for r in rows], dtype=np.float64) for m in methods})
    return out
