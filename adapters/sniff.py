"""A model file's format from its first bytes, so that a file under the wrong suffix is read correctly.

torch checkpoints are zip archives holding ``<name>/data.pkl`` (or, before torch 1.6, pickles that
start with the PROTO opcode 0x80); ``.npz`` files are zip archives of ``.npy`` members; ONNX files
are protobuf messages, recognized by parsing them into a ``ModelProto`` that has an IR version and
graph nodes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

from lipcert.errors import ModelLoadError

Format = Literal["onnx", "torch", "npz"]


def sniff(path: Path, *, parse_onnx: bool = True) -> Format | None:
    """The format of the model file ``path`` by its content, or ``None`` when the content is none of them.

    Zip archives and pickles are told by their first bytes; anything else is ONNX only if it parses as
    one (skipped with ``parse_onnx=False``, for a ``.onnx`` file, which its own reader parses anyway).
    Raises :class:`~lipcert.errors.ModelLoadError` for a directory or an empty file.
    """
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ModelLoadError(f"{path} is empty (0 bytes): the model file was not written completely")
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return None
    if head[0] == 0x80:
        return "torch"
    return "onnx" if parse_onnx and _parses_as_onnx(path) else None


def _parses_as_onnx(path: Path) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError):
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0
