"""The loaded data set: inputs, labels and where they came from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lipcert.errors import DatasetError

from .registry import DatasetInfo


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs and labels, with their provenance for reports.

    Unpacks as ``x, y = load(...)``.

    Parameters
    ----------
    x : numpy.ndarray
        float32 inputs; the built-in data sets give images in [0, 1], shape (N, C, H, W).
    y : numpy.ndarray
        int64 labels, shape (N,).
    name : str
        The data set's registry name, or the user file's path.
    split : str
        ``"test"`` or ``"train"``; ``""`` for a user file.
    total : int
        Number of inputs the source holds; ``n`` may be smaller when a ``limit`` was given.
    source_files : tuple of str
        The files read (``archive:member`` for a file read out of an archive).
    verified : bool
        Whether every file matched a known checksum (built-in data sets: always).
    note : str
        Anything a report should say, e.g. that only the first 100 test images are available.
    info : DatasetInfo or None
        Metadata (class names, normalization) of a built-in data set; None for user data.
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    split: str
    total: int
    source_files: tuple[str, ...]
    verified: bool
    note: str = ""
    info: DatasetInfo | None = None

    @property
    def n(self) -> int:
        """Number of inputs loaded."""
        return len(self.y)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield ``x`` then ``y``, so that ``x, y = dataset`` works."""
        yield self.x
        yield self.y

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.x.shape)
        note = f", note={self.note!r}" if self.note else ""
        return (f"Dataset(name={self.name!r}, split={self.split!r}, n={self.n} of {self.total}, "
                f"x={self.x.dtype}[{shape}], verified={self.verified}{note})")


def limited(total: int, limit: int | None) -> int:
    """How many of ``total`` inputs to use under ``limit`` (None: all).

    Raises
    ------
    DatasetError
        If ``limit`` is not a positive integer.
    """
    if limit is None:
        return total
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    return min(total, int(limit))


def to_unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]."""
    out = x.astype(np.float32)
    out /= np.float32(255.0)
    return out
