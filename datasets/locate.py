"""Where data files are looked for, and where downloads go.

A built-in data set ``<name>`` is looked up as ``<dir>/<name>/<file>`` for each ``<dir>`` in
:func:`search_dirs`, in order: the ``root`` argument, the ``LIPCERT_DATA`` environment variable,
the user cache (:func:`cache_dir`) and :data:`SYSTEM_DIR` (where Debian's ``dataset-*`` packages
install, e.g. ``/usr/share/datasets/fashion-mnist``).  ``root`` and ``LIPCERT_DATA`` may also
name a folder that holds a ``datasets/`` subfolder (a data folder that also has ``models/``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .registry import DataFile

ENV = "LIPCERT_DATA"
SYSTEM_DIR = Path("/usr/share/datasets")


def cache_dir() -> Path:
    """The user cache folder for data sets (it need not exist yet).

    ``%LOCALAPPDATA%\\lipcert\\cache\\datasets`` on Windows, ``~/Library/Caches/lipcert/datasets``
    on macOS, else ``$XDG_CACHE_HOME/lipcert/datasets`` (default ``~/.cache/lipcert/datasets``).
    """
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "lipcert" / "cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "lipcert"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lipcert"
    return base / "datasets"


def search_dirs(root: str | os.PathLike[str] | None = None) -> tuple[Path, ...]:
    """The folders searched for ``<name>/<file>``, in order, without duplicates.

    Parameters
    ----------
    root : path, optional
        Searched first (and its ``datasets/`` subfolder).

    Returns
    -------
    tuple of Path
        ``root``, ``root/datasets``, ``$LIPCERT_DATA``, ``$LIPCERT_DATA/datasets``, the user
        cache and :data:`SYSTEM_DIR` (entries whose origin is unset are left out).
    """
    dirs: list[Path] = []
    for base in (root, os.environ.get(ENV) or None):
        if base is not None:
            base = Path(base).expanduser()
            dirs += [base, base / "datasets"]
    dirs += [cache_dir(), SYSTEM_DIR]
    return tuple(dict.fromkeys(dirs))


@dataclass(frozen=True)
class Found:
    """A located data file: a plain file, or ``member`` of the archive at ``path``."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def find(name: str, entry: DataFile, dirs: tuple[Path, ...]) -> Found | None:
    """The first copy of ``entry`` (or of the archive holding it) under ``<dir>/<name>/``.

    Every folder is searched for the file itself (under any of its names) before any folder is
    searched for its archive, so an extracted copy wins over an archive.
    """
    for d in dirs:
        for file_name in entry.names:
            if (d / name / file_name).is_file():
                return Found(d / name / file_name)
    if entry.archive is not None:
        for d in dirs:
            if (d / name / entry.archive.path).is_file():
                return Found(d / name / entry.archive.path, entry.path)
    return None
