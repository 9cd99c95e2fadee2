"""Checksums of data files: ``"<algorithm>:<hex>"`` strings checked with hashlib."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterable
from pathlib import Path

from lipcert.errors import DatasetError

from .registry import DataFile

CHUNK = 1 << 20


def hashers(digests: Iterable[str]) -> dict[str, hashlib._Hash]:
    """One fresh hashlib object per algorithm named in ``digests``."""
    return {d.split(":", 1)[0]: hashlib.new(d.split(":", 1)[0]) for d in digests}


def matches(found: dict[str, hashlib._Hash], digests: Iterable[str]) -> bool:
    """Whether any expected ``"<algorithm>:<hex>"`` digest equals the computed one."""
    for d in digests:
        algo, hexdigest = d.split(":", 1)
        if algo in found and found[algo].hexdigest() == hexdigest.lower():
            return True
    return False


def file_matches(path: Path, digests: tuple[str, ...]) -> bool:
    """Whether the file at ``path`` has one of ``digests`` (read in chunks)."""
    found = hashers(digests)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            for h in found.values():
                h.update(chunk)
    return matches(found, digests)


def verified_payload(data: bytes, entry: DataFile, where: str) -> bytes:
    """Check ``data`` (the bytes of ``entry`` read from ``where``) and return its payload.

    The payload is ``data`` itself, or its decompressed content for a ``.gz`` file.  The file
    is accepted if its own bytes match one of ``entry.digests`` or its decompressed content
    matches one of ``entry.content_digests``.

    Raises
    ------
    DatasetError
        On a checksum mismatch or a corrupt gzip stream, naming ``where``.
    """
    found = hashers(entry.digests)
    for h in found.values():
        h.update(data)
    ok = matches(found, entry.digests)
    if not entry.path.endswith(".gz"):
        if not ok:
            raise mismatch(where, entry, found)
        return data
    try:
        payload = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{where} is not a valid gzip file ({exc}); it is corrupt or truncated: "
                           f"{_remedy(entry)}") from exc
    if not ok:
        content = hashers(entry.content_digests)
        for h in content.values():
            h.update(payload)
        if not matches(content, entry.content_digests):
            raise mismatch(where, entry, found)
    return payload


def mismatch(where: str, entry: DataFile, found: dict[str, hashlib._Hash]) -> DatasetError:
    """The error for a file whose checksum matches none of the known ones."""
    got = ", ".join(f"{a} {h.hexdigest()}" for a, h in found.items())
    expected = ", ".join(entry.digests + tuple(f"{d} (decompressed)" for d in entry.content_digests))
    return DatasetError(f"{where} failed its checksum: {got}, expected {expected}. The file is corrupt or "
                        f"not the official one: {_remedy(entry)}")


def _remedy(entry: DataFile) -> str:
    url = entry.url or (entry.archive.url if entry.archive else None)
    source = f" from {url}" if url else ""
    return f"delete it and download {entry.archive.path if entry.archive else entry.path} again{source}"
