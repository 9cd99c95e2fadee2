"""A user's own inputs and labels from .npz / .npy files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from lipcert.errors import DatasetError

from .dataset import Dataset, limited, to_unit_float

SUFFIXES = (".npz", ".npy")


def labels_path(path: Path) -> Path | None:
    """The labels file that goes with inputs ``path``: ``X_eran.npy`` -> ``y_eran.npy``.

    Only a file name starting with ``x`` or ``X`` has a default labels file (the convention of
    alpha-beta-CROWN's ``X_eran.npy`` / ``y_eran.npy``).
    """
    if path.name[:1] not in ("x", "X"):
        return None
    return path.with_name("y" + path.name[1:])


def _read(path: Path) -> np.ndarray | np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DatasetError(f"no such data file: {path}")
    try:
        loaded: np.ndarray | np.lib.npyio.NpzFile = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path} is not a readable {path.suffix} file (pickled objects are not "
                           f"accepted): {exc}") from exc
    return loaded


def _pick(npz: np.lib.npyio.NpzFile, keys: tuple[str, ...], path: Path) -> np.ndarray:
    for k in keys:
        if k in npz.files:
            return np.asarray(npz[k])
    raise DatasetError(f"{path} has no array {' or '.join(keys)} (found: {', '.join(npz.files) or 'nothing'}); "
                       "save inputs as 'x' and labels as 'y', e.g. np.savez(path, x=x, y=y)")


def _inputs(x: np.ndarray, where: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return to_unit_float(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{where}: inputs are {x.dtype}; expected uint8 pixels 0..255 or floats")
    if not np.isfinite(x).all():
        raise DatasetError(f"{where}: inputs hold {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x.astype(np.float32)


def _labels(y: np.ndarray, n: int, num_classes: int | None, where: Path) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where}: labels have shape {y.shape}; expected ({n},), one per input")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels are {y.dtype} and not whole numbers; expected integer class indices")
    bad = (y < 0) | (y >= num_classes) if num_classes is not None else y < 0
    if bad.any():
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        raise DatasetError(f"{where}: {int(bad.sum())} labels are out of range (first: {y[bad][0]} at index "
                           f"{int(np.flatnonzero(bad)[0])}); expected {allowed}")
    return y.astype(np.int64)


def load_arrays(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None, *,
                limit: int | None = None, num_classes: int | None = None) -> Dataset:
    """Inputs and labels from a user's own .npz or .npy file.

    Parameters
    ----------
    path : path
        A ``.npz`` holding arrays ``x`` and ``y`` (or ``X`` and ``Y``), or a ``.npy`` of inputs.
    labels : path, optional
        A ``.npy`` of labels.  Required for a ``.npy`` of inputs unless its name starts with
        ``x``/``X`` and the same name with ``y`` exists (``X_eran.npy`` -> ``y_eran.npy``);
        overrides ``y`` of a ``.npz``.
    limit : int, optional
        Use only the first ``limit`` inputs.
    num_classes : int, optional
        When given, labels must lie in ``0..num_classes-1``.

    Returns
    -------
    Dataset
        ``x`` as float32 in the layout stored (uint8 pixels are scaled to [0, 1]; floats are kept
        as they are), ``y`` as int64, ``verified=False``.  ``note`` says when float inputs lie
        outside [0, 1].

    Raises
    ------
    DatasetError
        For a missing or unreadable file, missing arrays, non-numeric or non-finite inputs,
        labels that are not whole numbers, out of range or not one per input.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError(f"{path}: unsupported data file type {path.suffix!r}; expected .npz (arrays x, y) "
                           "or .npy (inputs, with a labels .npy)")
    data = _read(path)
    label_file = Path(labels).expanduser() if labels is not None else None
    if isinstance(data, np.ndarray):
        x = data
        label_file = label_file or labels_path(path)
        if label_file is None or (labels is None and not label_file.is_file()):
            looked = f" (looked for {label_file})" if label_file else ""
            raise DatasetError(f"{path} holds only inputs; pass the labels file as labels=...{looked}")
    else:
        with data:
            x = _pick(data, ("x", "X"), path)
            y = _pick(data, ("y", "Y"), path) if label_file is None else None
    if label_file is not None:
        stored = _read(label_file)
        if not isinstance(stored, np.ndarray):
            raise DatasetError(f"{label_file}: labels must be a .npy array, not a .npz")
        y = stored
    if x.ndim < 2:
        raise DatasetError(f"{path}: inputs have shape {x.shape}; expected (N, ...) with one row per input")
    total = len(x)
    if total == 0:
        raise DatasetError(f"{path} holds no inputs (0 rows); a data set needs at least one input")
    y = _labels(np.asarray(y), total, num_classes, label_file or path)
    n = limited(total, limit)
    x, y = _inputs(x[:n], path), y[:n]
    note = ""
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        note = f"input values span [{x.min():.4g}, {x.max():.4g}], not [0, 1]"
    files = (str(path),) + ((str(label_file),) if label_file is not None else ())
    return Dataset(x=x, y=y, name=str(path), split="", total=total, source_files=files,
                   verified=False, note=note)
