"""``lipcert.load``: any supported model source to a :class:`~lipcert.Network`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .network import Network


def load(source: Any, *, input_shape: Sequence[int] | None = None,
         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
         **options: Any) -> Network:
    """Load a model as a Network.

    ``source`` is a path to an .onnx file, a .pt/.pth file holding a whole pickled module, a
    .npz of weight matrices, or a ``torch.nn.Module`` (``input_shape`` is then required).
    ``mean``/``std`` prepend the input normalization (x - mean) / std, so the network (and
    its Lipschitz constant) refers to raw inputs.
    """
    if isinstance(source, Network):
        return source
    try:
        import torch

        if isinstance(source, torch.nn.Module):
            from .adapters.torch import from_module

            return from_module(source, input_shape=input_shape, mean=mean, std=std, **options)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"no such model file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        from .npz import load_npz

        if mean is not None or std is not None:
            raise ModelLoadError("mean/std are not supported for .npz networks; fold them into W1 and b1")
        return load_npz(path)
    if suffix == ".onnx":
        from .adapters.onnx import from_onnx

        return from_onnx(path, mean=mean, std=std, **options)
    if suffix in (".pt", ".pth"):
        from .adapters.torch import from_file

        return from_file(path, input_shape=input_shape, mean=mean, std=std, **options)
    raise ModelLoadError(f"unsupported model file {path.name!r}: expected .onnx, .pt, .pth or .npz")
