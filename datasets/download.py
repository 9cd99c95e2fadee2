"""Downloading a data file with a progress bar, verified before it is kept."""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from tqdm import tqdm

from lipcert.errors import DatasetError

from .checksum import CHUNK, hashers, matches

TIMEOUT_S = 60.0


def download(url: str, dest: Path, digests: tuple[str, ...]) -> Path:
    """Download ``url`` to ``dest`` and keep it only if its checksum is one of ``digests``.

    The bytes go to a temporary file next to ``dest`` (hashed while they arrive) that is renamed
    to ``dest`` once verified, so an interrupted or corrupt download never leaves a file at
    ``dest``.  A tqdm progress bar is shown on a terminal.

    Parameters
    ----------
    url : str
        Any URL ``urllib.request.urlopen`` accepts (``https://``, ``http://``, ``file://``).
    dest : Path
        Target file; its folder is created if needed.
    digests : tuple of str
        Accepted checksums, each ``"<algorithm>:<hex>"``.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DatasetError
        If the download fails (the message gives the reason) or the checksum does not match.
    """
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    found = hashers(digests)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=TIMEOUT_S) as response:
                size = response.headers.get("Content-Length")
                with tqdm(total=int(size) if size else None, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=dest.name, disable=None) as bar:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        for h in found.values():
                            h.update(chunk)
                        bar.update(len(chunk))
        except (URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise DatasetError(f"could not download {url}: {exc}") from exc
        if not matches(found, digests):
            got = ", ".join(f"{a} {h.hexdigest()}" for a, h in found.items())
            raise DatasetError(f"the file downloaded from {url} failed its checksum ({got}, expected "
                               f"{', '.join(digests)}); it was not kept")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        if not dest.exists():  # a failed download leaves no empty folders behind
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
    return dest
