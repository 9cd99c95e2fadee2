"""``lipcert.datasets.load``: a built-in data set (or a user's file) as a :class:`Dataset`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lipcert.errors import DatasetError

from . import locate
from .archive import read_member
from .checksum import verified_payload
from .cifar import parse_batch, parse_eran_csv
from .dataset import Dataset, limited, to_unit_float
from .download import download as fetch_url
from .idx import parse_idx
from .locate import Found, find, search_dirs
from .registry import DataFile, DatasetInfo, Source, info
from .user import SUFFIXES, load_arrays


def load(name: str | os.PathLike[str], split: str = "test", root: str | os.PathLike[str] | None = None, *,
         limit: int | None = None, download: bool = True) -> Dataset:
    """Load a data set as float32 inputs and int64 labels, verified by checksum.

    Parameters
    ----------
    name : str or path
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (see :func:`names`), or the path of a
        user's ``.npz``/``.npy`` file (read by :func:`load_arrays`; ``split``, ``root`` and
        ``download`` do not apply).
    split : {"test", "train"}
        Which split of a built-in data set.
    root : path, optional
        Folder searched first for ``<name>/<file>`` (also ``root/datasets/<name>/<file>``);
        downloads go here when given, else to the user cache.
    limit : int, optional
        Use only the first ``limit`` inputs (the report's ``n``); all when None.
    download : bool
        Download missing files from the data set's canonical source.  When False, or when the
        download fails, a missing file raises an error saying which file to put where.

    Returns
    -------
    Dataset
        Unpacks as ``x, y``: images in [0, 1] as float32 (N, C, H, W) and labels as int64 (N,),
        plus ``n``, ``total``, ``source_files``, ``note`` and ``info`` for reports.

    Raises
    ------
    DatasetError
        For an unknown data set or split, a missing file (the message names the file, the
        folders searched and where to put it), a checksum mismatch, or a corrupt file.

    Notes
    -----
    Files keep their original names and formats (IDX ``.gz`` files; the CIFAR-10 python batches
    under ``cifar-10-batches-py/``, or the ``cifar-10-python.tar.gz`` tarball itself) and are
    looked up in the folders of :func:`search_dirs`: ``root``, ``$LIPCERT_DATA``, the user cache,
    ``/usr/share/datasets``.  A split may have a fallback source: without the CIFAR-10 test batch,
    the CSV that ERAN and VNN-COMP tools use (``cifar10_test.csv``, the first 100 test images)
    is read, and ``note`` and ``total`` say so.
    """
    if isinstance(name, os.PathLike) or Path(name).suffix.lower() in SUFFIXES:
        return load_arrays(name, limit=limit)
    meta = info(name)
    split = split.lower()
    if split not in meta.sources:
        raise DatasetError(f"{meta.name} has no split {split!r}; its splits are: {', '.join(meta.splits)}")
    limited(0, limit)  # rejects a bad ``limit`` before any file is touched
    dirs = search_dirs(root)
    sources = meta.sources[split]
    for source in sources:
        found = [find(meta.name, f, dirs) for f in source.files]
        if all(f is not None for f in found):
            return _read(meta, split, source, [f for f in found if f is not None], limit)
    dest = (Path(root).expanduser() if root is not None else locate.cache_dir()) / meta.name
    message = _missing(meta, split, sources, dirs, dest)
    primary = next((s for s in sources if s.downloadable), None)
    if not download or primary is None:
        raise DatasetError(message)
    try:
        found = [find(meta.name, f, dirs) or _fetch(meta, f, dest) for f in primary.files]
    except DatasetError as exc:
        raise DatasetError(f"{message} Downloading failed: {exc}") from exc
    return _read(meta, split, primary, [f for f in found if f is not None], limit)


def _read(meta: DatasetInfo, split: str, source: Source, found: list[Found], limit: int | None) -> Dataset:
    """Read and verify the located files of ``source`` and build the Dataset."""
    payloads = []
    for entry, where in zip(source.files, found):
        if where.member is not None:
            data = read_member(where.path, where.member)
        else:
            try:
                data = where.path.read_bytes()
            except OSError as exc:
                raise DatasetError(f"cannot read {where}: {exc}") from exc
        payloads.append(verified_payload(data, entry, str(where)))
    if source.format == "idx":
        x = parse_idx(payloads[0], str(found[0]), ndim=3)[:, None]
        y = parse_idx(payloads[1], str(found[1]), ndim=1).astype(np.int64)
    elif source.format == "cifar-python":
        parts = [parse_batch(p, str(w)) for p, w in zip(payloads, found)]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
    else:
        x, y = parse_eran_csv(payloads[0], str(found[0]))
    files = ", ".join(str(f) for f in found)
    if x.shape[1:] != meta.input_shape or len(x) != len(y):
        raise DatasetError(f"{files}: {len(x)} inputs of shape {x.shape[1:]} and {len(y)} labels; expected "
                           f"one label per input of shape {meta.input_shape}")
    if len(y) and (y.min() < 0 or y.max() >= meta.num_classes):
        raise DatasetError(f"{files}: labels span {y.min()}..{y.max()}, expected 0..{meta.num_classes - 1}")
    total = len(y)
    n = limited(total, limit)
    notes = [source.note] if source.note else []
    if limit is not None and limit > total:
        notes.append(f"{limit} inputs were asked for but only {total} are available")
    return Dataset(x=to_unit_float(x[:n]), y=y[:n], name=meta.name, split=split, total=total,
                   source_files=tuple(str(f) for f in found), verified=True, note="; ".join(notes), info=meta)


def _fetch(meta: DatasetInfo, entry: DataFile, dest: Path) -> Found:
    """Download ``entry`` (or its archive, then extract its members) into ``dest``."""
    if entry.url is not None:
        return Found(fetch_url(entry.url, dest / entry.path, entry.digests))
    archive = entry.archive
    if archive is None or archive.url is None:
        raise DatasetError(f"{entry.path} has no download source")
    tarball = fetch_url(archive.url, dest / archive.path, archive.digests)
    members = {f for s in meta.sources.values() for src in s for f in src.files if f.archive == archive}
    try:
        for member in sorted(members, key=lambda f: f.path):
            data = verified_payload(read_member(tarball, member.path), member, f"{tarball}:{member.path}")
            target = dest / member.path
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.part")
            part.write_bytes(data)
            os.replace(part, target)
    finally:
        tarball.unlink(missing_ok=True)
    return Found(dest / entry.path)


def _missing(meta: DatasetInfo, split: str, sources: tuple[Source, ...], dirs: tuple[Path, ...],
             dest: Path) -> str:
    """The message for a split none of whose sources is complete on disk."""
    options = []
    for source in sources:
        text = ", ".join(f.path for f in source.files)
        urls = [f.url for f in source.files if f.url is not None]
        archives = list(dict.fromkeys(f.archive for f in source.files if f.archive is not None))
        if urls:
            text += f" (download: {', '.join(urls)})"
        for a in archives:
            text += f" (extracted from {a.path}, {a.url}, which may be put there as it is)"
        options.append(text + (f" [{source.note}]" if source.note else ""))
    searched = ", ".join(str(d / meta.name) for d in dirs)
    return (f"{meta.title} {split} data not found. Needed: {'; or else '.join(options)}. Searched: {searched}. "
            f"Put the files in {dest} (or in <dir>/{meta.name}/ with LIPCERT_DATA=<dir>).")
