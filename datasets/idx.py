"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

A big-endian header: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, then one 4-byte size per dimension; the data follow in C order.
"""

from __future__ import annotations

import numpy as np

from lipcert.errors import DatasetError

UBYTE = 0x08


def parse_idx(payload: bytes, where: str, ndim: int) -> np.ndarray:
    """The uint8 array stored in decompressed IDX bytes.

    Parameters
    ----------
    payload : bytes
        The uncompressed file content.
    where : str
        The file it came from, for error messages.
    ndim : int
        Expected number of dimensions (3 for images, 1 for labels).

    Returns
    -------
    numpy.ndarray
        Read-only uint8 array of the stored shape.

    Raises
    ------
    DatasetError
        On a wrong magic number (not IDX, not unsigned bytes, or not ``ndim`` dimensions) or a
        size that does not match the header.
    """
    header = 4 + 4 * ndim
    magic = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else None
    expected = (UBYTE << 8) | ndim
    if magic != expected:
        raise DatasetError(f"{where} is not an IDX file of {ndim}-d unsigned bytes: magic number {magic}, "
                           f"expected {expected}")
    shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(payload) != header + size:
        raise DatasetError(f"{where}: the IDX header says shape {shape} ({size} bytes of data) but the file "
                           f"holds {len(payload) - header}; the file is truncated or corrupt")
    return np.frombuffer(payload, np.uint8, count=size, offset=header).reshape(shape)
