"""Model files by their content (:mod:`.sniff`) and suffix: the one place that knows which reader a file needs.

* ``.onnx``: :func:`.onnx.read_model`, then :func:`.onnx.convert_model` (the interpreted graph);
* ``.pt``/``.pth``: :func:`load_torch_file` (a whole pickled module, put in eval mode if it is in
  training mode), then :func:`.torch.analyze_module` (the traced module);
* ``.npz``: no conversion (the file *is* the dense chain of a Network); :func:`lipcert.npz.load_npz`
  reads it when its Network is built, after mean, std and options have been refused.

:func:`read` returns a :class:`ModelFile`: :func:`lipcert.load` builds its Network with
:meth:`ModelFile.network`, and :mod:`.rebuild` turns its conversion (or, for ``.npz``, its
Network) into a torch module.  The onnx and torch readers are imported only for a file that needs them.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lipcert.errors import ModelLoadError
from lipcert.graph import AnyNetwork
from lipcert.network import Network

from .checkpoint import NESTED_KEYS
from .graph import Conversion
from .sniff import sniff, torch_load

Format = Literal["onnx", "torch", "npz"]
SUFFIXES: dict[str, Format] = {".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".npz": "npz"}
"""Model-file suffixes (lower case) and their formats."""


@dataclass(frozen=True)
class ModelFile:
    """A model file, read: its format, the adapters' conversion and how its Network is built.

    Attributes
    ----------
    path : Path
    format : "onnx", "torch" or "npz"
    conversion : Conversion or None
        The layer chain with every unsupported operator (not yet raised); None for ``.npz``.
    """

    path: Path
    format: Format
    conversion: Conversion | None
    _build: Callable[..., AnyNetwork] = field(repr=False, compare=False)

    def network(self, *, mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                **options: Any) -> AnyNetwork:
        """The Network :func:`lipcert.load` returns for this file (``options`` as for :func:`lipcert.load`).

        Raises
        ------
        ModelLoadError, UnsupportedOperatorError
            As :func:`lipcert.load`; for ``.npz``, any mean, std or option.
        """
        return self._build(mean=mean, std=std, **options)


def read(path: str | Path, *, input_shape: Sequence[int] | None = None) -> ModelFile:
    """Read a model file and convert it to the adapters' layer chain (no Network built yet).

    Parameters
    ----------
    path : str or Path
        ``.onnx``, ``.pt``/``.pth`` (a whole pickled module: unpickling runs code, read only
        files you trust) or ``.npz``.
    input_shape : sequence of int, optional
        Shape of one input without the batch axis, as for :func:`lipcert.load` (ignored for ``.npz``).

    Raises
    ------
    ModelLoadError
        A missing file, an unsupported suffix, or what the format's reader raises (corrupt
        file, a state_dict instead of a module, untraceable module, ...).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"no such model file: {path}")
    fmt = SUFFIXES.get(path.suffix.lower())
    fmt = sniff(path, parse_onnx=fmt != "onnx") or fmt  # a file under another suffix is read as what it holds
    if fmt == "onnx":
        from . import onnx

        model = onnx.read_model(path)
        conv = onnx.convert_model(model, str(path), input_shape)
        return ModelFile(path, "onnx", conv, partial(onnx.to_network, model, conv))
    if fmt == "torch":
        from . import torch as torch_adapter

        module = load_torch_file(path)
        if module.training:
            module.eval()
        conv = torch_adapter.analyze_module(module, input_shape=input_shape, source=str(path))
        return ModelFile(path, "torch", conv, partial(torch_adapter.to_network, module, conv))
    if fmt == "npz":
        return ModelFile(path, "npz", None, partial(_npz_network, path))
    raise ModelLoadError(f"unsupported model file {path.name!r}: expected .onnx, .pt, .pth or .npz")


def _npz_network(path: Path, *, mean: Sequence[float] | float | None, std: Sequence[float] | float | None,
                 **options: Any) -> Network:
    """The Network of an .npz file, read here (after the options are refused, before any array is read)."""
    from lipcert.npz import load_npz

    options.pop("max_dense_bytes", None)  # the file holds the dense matrices already: nothing to materialize
    options.pop("dense", None)
    if mean is not None or std is not None or options:
        raise ModelLoadError("mean/std and loading options are not supported for .npz networks; fold the "
                             "normalization into W1 and b1")
    return load_npz(path)


def _state_dict_message(path: Path, obj: dict[Any, Any]) -> str:
    keys = list(obj)[:6]
    nested = next((k for k in NESTED_KEYS if k in obj), None)
    return (
        f"{path} holds a {'checkpoint' if nested else 'state_dict'} (a dict with keys {keys}"
        f"{' ...' if len(obj) > 6 else ''}), "
        "not a whole pickled module. A state_dict has no architecture; name the model class it belongs to:\n"
        f"    lipcert.load(\"mymodels:MyNet\", weights=\"{path}\", input_shape=(1, 28, 28))\n"
        f"    lipcert bound --model mymodels:MyNet --weights {path} --input-shape 1,28,28\n"
        "('module:Class' or 'file.py:Class'; model_args= / --model-args for its arguments, model_path= / "
        "--model-path for the folder of its code). In Python, lipcert.load(module) also works on a module with "
        "the weights already loaded (model.load_state_dict(...); model.eval()). The ERAN and auto_LiRPA benchmark "
        "checkpoints load with lipcert.reference_models.load_checkpoint(path)")


def load_torch_file(path: str | Path) -> nn.Module:
    """A whole pickled module from a .pt/.pth file, or a clear error (state_dict, corrupt file, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no such model file: {path}")
    try:
        obj = torch_load(path)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise ModelLoadError(f"{path} is not a readable torch file: {exc}") from exc
        try:  # a whole pickled module needs full unpickling (only load files you trust)
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - unpickling can raise anything
            raise ModelLoadError(f"{path} could not be unpickled ({type(exc2).__name__}: {exc2}); a whole module "
                                 "needs its class importable under the same name") from exc2
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise ModelLoadError(_state_dict_message(path, obj))
    raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")


__all__ = ["Format", "ModelFile", "SUFFIXES", "load_torch_file", "read"]
