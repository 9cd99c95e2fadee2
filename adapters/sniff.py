"""A model file's format from its first bytes, so that a file under the wrong suffix is read correctly,
and the one guarded ``torch.load`` of model and weights files.

torch checkpoints are zip archives holding ``<name>/data.pkl`` (or, before torch 1.6, pickles that
start with the PROTO opcode 0x80); ``.npz`` files are zip archives of ``.npy`` members; ONNX files
are protobuf messages, recognized by parsing them into a ``ModelProto`` that has an IR version and
graph nodes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

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


def torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` (no code in the file runs), or ModelLoadError for a file
    that is no torch file (neither a zip checkpoint nor a pickle) or fails to read as one.

    ``pickle.UnpicklingError``, raised for a file that needs full unpickling (a whole pickled module),
    is left to the caller, which decides whether to unpickle it.
    """
    import pickle

    import torch

    if sniff(path, parse_onnx=False) != "torch":
        raise ModelLoadError(f"{path} is not a readable torch file: it is neither a zip checkpoint nor a pickle; "
                             "it may be truncated, corrupt or another kind of file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # noqa: BLE001 - reading arbitrary bytes as a checkpoint can raise anything
        raise ModelLoadError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc}); it may be "
                             "truncated, corrupt or another kind of file") from exc
