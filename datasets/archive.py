"""Reading one file out of a (compressed) tar archive, such as the CIFAR-10 tarball."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

from lipcert.errors import DatasetError


def read_member(path: Path, member: str) -> bytes:
    """The bytes of ``member`` in the tar archive at ``path``, read without extracting anything.

    Raises
    ------
    DatasetError
        If the archive is unreadable or has no regular file ``member``.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                raise DatasetError(f"{path} has no file {member}") from None
            handle = tar.extractfile(info) if info.isfile() else None
            if handle is None:
                raise DatasetError(f"{path}: {member} is not a regular file")
            with handle:
                return handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path} is not a readable tar archive ({exc}); it is corrupt or truncated") from exc
