"""CIFAR-10 file formats: the python batches of the official tarball, and ERAN's CSV."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from lipcert.errors import DatasetError

SIDE = 32
CHANNELS = 3
PIXELS = SIDE * SIDE * CHANNELS

# What a CIFAR-10 python batch may refer to: a dict of numpy arrays and lists (pickled by
# Python 2; ``_codecs.encode`` appears in Python 3 pickles of the same content).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def parse_batch(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one CIFAR-10 python batch.

    A batch is a pickled dict whose ``data`` is an (N, 3072) uint8 array, each row the red,
    green and blue 32 x 32 planes in turn, and whose ``labels`` is a list of N ints.

    Parameters
    ----------
    payload : bytes
        The batch file's bytes.
    where : str
        The file it came from, for error messages.

    Returns
    -------
    x : numpy.ndarray
        uint8 images, shape (N, 3, 32, 32).
    y : numpy.ndarray
        int64 labels, shape (N,).

    Raises
    ------
    DatasetError
        If the file is not such a pickle (only numpy arrays and plain containers are unpickled).
    """
    try:
        batch = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{where} is not a CIFAR-10 python batch: {exc}") from exc
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS and isinstance(labels, list) and len(labels) == data.shape[0]):
        raise DatasetError(f"{where} is not a CIFAR-10 python batch: expected a dict with 'data' "
                           f"(N x {PIXELS} uint8) and 'labels' (N ints)")
    return data.reshape(-1, CHANNELS, SIDE, SIDE), np.asarray(labels, dtype=np.int64)


def parse_eran_csv(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a CIFAR-10 CSV as used by ERAN and VNN-COMP tools.

    One row per image: the label, then 3072 pixel values 0..255 in H, W, C order (R, G, B
    interleaved per pixel, rows top to bottom).

    Parameters
    ----------
    payload : bytes
        The CSV file's bytes.
    where : str
        The file it came from, for error messages.

    Returns
    -------
    x : numpy.ndarray
        uint8 images transposed to (N, 3, 32, 32).
    y : numpy.ndarray
        int64 labels, shape (N,).

    Raises
    ------
    DatasetError
        If a row is not 3073 integers or a pixel is outside 0..255.
    """
    try:
        rows = np.loadtxt(io.BytesIO(payload), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{where} is not a CSV of integers: {exc}") from exc
    if rows.shape[1] != 1 + PIXELS:
        raise DatasetError(f"{where}: rows have {rows.shape[1]} values, expected 1 label + {PIXELS} pixels")
    pixels = rows[:, 1:]
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DatasetError(f"{where}: pixel values span {pixels.min()}..{pixels.max()}, expected 0..255")
    x = pixels.astype(np.uint8).reshape(-1, SIDE, SIDE, CHANNELS).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), rows[:, 0]
