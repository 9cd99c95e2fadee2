"""Run folders: where a run may write, one writer at a time, and the manifest that seals a finished run.

A run folder holds the files of one ``lipcert certify`` run (:data:`RUN_FILES`).  Before anything
is computed, :func:`check_output_folder` refuses a folder that is a file, cannot be written, or
holds files that are not a lipcert run; :func:`hold` takes an exclusive lock (``filelock``) on a
records file for the whole run, so a second writer is refused with a message naming the first;
:func:`set_aside` moves an earlier run into ``previous-run-<time>/`` instead of deleting it (removed
only when the new run has finished, :func:`discard_aside`); :func:`write_manifest`, the last file
written, holds the sha256 of every other file, and :func:`check_manifest` refuses a run whose files
were cut or changed afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from .errors import ReportError, RunFolderError, RunLockedError

RUN_FILES = ("records.jsonl", "attack.jsonl", "report.json", "samples.csv", "report.md", "report.html",
             "manifest.json")
"""The files a certification run writes into its folder."""
COMPARISON_FILES = ("comparison.json", "report.md", "report.html")
"""The files ``lipcert report`` writes into its output folder."""
VERIFIER_FILES = ("lipcert", "verifiers.jsonl", "comparison.json", "comparison_samples.csv", "report.md",
                  "report.html")
"""What ``lipcert compare`` writes into its output folder (``lipcert/`` is its certification run)."""
MANIFEST = "manifest.json"
ASIDE_PREFIX = "previous-run-"
_LOCK_SUFFIX = ".lock"
_OWNER_SUFFIX = ".owner.json"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_BOOKKEEPING = {f"{name}{suffix}" for name in ("records.jsonl", "verifiers.jsonl")
                for suffix in (_LOCK_SUFFIX, _OWNER_SUFFIX)} | {f"{name}.tmp" for name in RUN_FILES + VERIFIER_FILES}


def _is_bookkeeping(name: str) -> bool:
    return name in _BOOKKEEPING or name.startswith(ASIDE_PREFIX)


def _first_json(path: Path) -> Any:
    """The JSON value on the first line of a JSON-lines file, or of a whole JSON file; None if unreadable."""
    try:
        with open(path, "rb") as fh:
            text = fh.readline() if path.suffix == ".jsonl" else fh.read(1 << 26)
        return json.loads(text)
    except (OSError, ValueError):
        return None


def _written_by_lipcert(path: Path) -> bool:
    """Whether a marker file (records, manifest, report or comparison JSON) has lipcert's own content."""
    value = _first_json(path)
    if not isinstance(value, dict):
        return False
    if path.name in ("records.jsonl", "verifiers.jsonl"):
        return value.get("record") == "header" or path.name == "verifiers.jsonl" and "verifier" in value
    if path.name == MANIFEST:
        return value.get("complete") is True and isinstance(value.get("sha256"), dict)
    if path.name == "report.json":
        return "schema_version" in value and "lipcert_version" in value
    return value.get("kind") in ("comparison", "verifier-comparison") and "schema_version" in value


def folder_kind(folder: Path) -> str:
    """``"missing"``, ``"empty"``, ``"run"`` (a certification run), ``"comparison"`` (``lipcert report``'s
    output), ``"verifiers"`` (``lipcert compare``'s) or ``"foreign"`` (anything else, including a mix).

    Files are recognized by name and by content: a folder is lipcert's only if its marker files
    (records.jsonl, manifest.json, report.json, comparison.json, verifiers.jsonl) were written by lipcert
    and every other file is one lipcert writes there.
    """
    if not folder.exists():
        return "missing"
    names = {p.name for p in folder.iterdir() if not _is_bookkeeping(p.name)}
    if not names:
        return "empty"
    markers = names & {"records.jsonl", MANIFEST, "report.json", "comparison.json", "verifiers.jsonl"}
    if not markers or not all(_written_by_lipcert(folder / m) for m in markers):
        return "foreign"
    if names <= set(COMPARISON_FILES):
        return "comparison"
    if names <= set(RUN_FILES):
        return "run"
    if names <= set(VERIFIER_FILES) and ("lipcert" not in names or folder_kind(folder / "lipcert") == "run"):
        return "verifiers"
    return "foreign"


def is_sweep(folder: Path) -> bool:
    """Whether ``folder`` holds a sweep of ``lipcert certify MODEL1 MODEL2 ...``: run folders (one per
    model) and their comparison report, nothing else."""
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not _is_bookkeeping(p.name)]
    runs = [p for p in entries if p.is_dir()]
    files = {p.name for p in entries if not p.is_dir()}
    return (bool(runs) and all(folder_kind(r) in ("run", "empty") for r in runs) and files <= set(COMPARISON_FILES)
            and ("comparison.json" not in files or _written_by_lipcert(folder / "comparison.json")))


def _require_writable(out: Path, folder: Path) -> None:
    """Refuse (RunFolderError) an ``--out`` whose folder (where it is or would be created) cannot be written."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise RunFolderError(f"--out {out} cannot be written ({folder}: {exc.strerror or exc}); choose a "
                             "writable folder") from None


def check_output_folder(folder: str | Path, *, accept: tuple[str, ...] = ("missing", "empty")) -> str:
    """The :func:`folder_kind` of ``folder`` if a run may write there: not a file, writable, and of a kind
    in ``accept``.

    Creates nothing; raises :class:`~lipcert.errors.RunFolderError` naming the problem.  Writability
    is tested on the folder or on its nearest existing parent (where it would be created).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {path} is a file, not a folder; choose a folder for the results")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"--out {path} cannot be created: {existing} is a file")
    _require_writable(path, existing)
    kind = "sweep" if "sweep" in accept and is_sweep(path) else folder_kind(path)
    if kind not in accept:
        if kind == "foreign":
            names = sorted(p.name for p in path.iterdir() if not _is_bookkeeping(p.name))
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise RunFolderError(f"--out {path} holds files that lipcert did not write ({shown}); refusing to "
                                 "write over them: choose an empty or new folder")
        raise RunFolderError(f"--out {path} holds a lipcert {kind}; choose another folder")
    return kind


def check_output_file(file: str | Path, *, inputs: tuple[str | Path, ...] = (),
                      first_lines: tuple[str, ...] = ()) -> Path:
    """The path ``file`` if a result file may be written there, else :class:`~lipcert.errors.RunFolderError`;
    checked before anything is computed.

    Refused: a folder, a missing or unwritable folder, one of the command's ``inputs`` (the model, the
    property), and an existing file whose first line is none of ``first_lines`` (not an earlier result).
    """
    path = Path(file)
    if path.is_dir():
        raise RunFolderError(f"--out {path} is a folder; give the path of the result file")
    if path.exists():
        if any(Path(i).exists() and path.samefile(i) for i in inputs):
            raise RunFolderError(f"--out {path} is one of the command's own input files; choose another path")
        with open(path, "rb") as fh:
            first = fh.readline(256).decode("utf-8", "replace").strip()
        if first not in first_lines:
            raise RunFolderError(f"--out {path} exists and is not an earlier result (its first line is "
                                 f"{first[:40]!r}); refusing to overwrite it")
    if not path.parent.is_dir():
        raise RunFolderError(f"--out {path}: the folder {path.parent} does not exist")
    _require_writable(path, path.parent)
    return path


@contextlib.contextmanager
def hold(records: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of a records file (``<records>.lock``) for the duration of the block.

    Re-entrant in one process (the CLI holds it around ``certify``, which takes it again); a second
    process is refused at once with :class:`~lipcert.errors.RunLockedError` naming the holder
    (pid, host, command and start time, read from ``<records>.owner.json``).
    """
    path = Path(records)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None
    lock = filelock.FileLock(str(path) + _LOCK_SUFFIX, timeout=0, is_singleton=True)
    owner = Path(str(path) + _OWNER_SUFFIX)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunLockedError(f"{path} is being written by another lipcert run ({_describe(owner)}); wait for it "
                             "to finish or stop it before resuming or overwriting") from None
    first = lock.lock_counter == 1
    if first:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "command": " ".join(sys.argv) or "python",
                                     "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
    try:
        yield
    finally:
        if first:
            owner.unlink(missing_ok=True)
        lock.release()


def _describe(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its owner is unknown"


def set_aside(folder: Path) -> Path | None:
    """Move the run files of ``folder`` into a new ``previous-run-<UTC time>/`` inside it (each an
    atomic rename); the folder moved to, or ``None`` when there was nothing to move."""
    present = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if not present:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = folder / f"{ASIDE_PREFIX}{stamp}"
    aside.mkdir()
    for p in present:
        os.replace(p, aside / p.name)
    return aside


def discard_aside(aside: Path | None) -> None:
    """Delete an earlier run set aside by :func:`set_aside` (call once the new run has finished)."""
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_manifest(folder: Path, files: list[str], info: dict[str, Any]) -> Path:
    """Write ``manifest.json``: the sha256 of each of ``files`` (those present) and ``info``; written
    last, atomically, so its presence means the run finished."""
    sums = {name: sha256_file(folder / name) for name in files if (folder / name).is_file()}
    path = folder / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"complete": True, **info, "sha256": sums}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a finished run, after checking every file it lists against its sha256.

    Raises :class:`~lipcert.errors.ReportError` for a run without a manifest (unfinished or written
    by lipcert 0.1) and for a file cut, changed or removed after the run finished.
    """
    path = folder / MANIFEST
    if not path.is_file():
        done = recorded_rows(folder / "records.jsonl")
        state = f"records.jsonl holds {done} finished inputs; " if done is not None else ""
        raise ReportError(f"{folder} is not a finished lipcert run: it has no {MANIFEST} ({state}finish it with "
                          "the same 'lipcert certify' command and --resume, which also rewrites the reports)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        sums = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path} is not a lipcert manifest: {exc}") from None
    for name, digest in sums.items():
        file = folder / name
        if not file.is_file():
            raise ReportError(f"{folder}: {name} is missing although the run's {MANIFEST} lists it")
        if sha256_file(file) != digest:
            raise ReportError(f"{folder}: {name} was changed after the run finished (its sha256 differs from "
                              f"{MANIFEST}); rerun 'lipcert certify ... --resume' to rewrite the reports")
    return manifest


def recorded_rows(records: Path) -> int | None:
    """Complete lines after the header of a records file (None when there is no file)."""
    if not records.is_file():
        return None
    with open(records, "rb") as fh:
        return max(sum(1 for line in fh if line.endswith(b"\n")) - 1, 0)
