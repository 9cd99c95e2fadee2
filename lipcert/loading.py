"""``lipcert.load``: any supported model source to a :class:`~lipcert.Network`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError
from .network import Network, require_network

OPTIONS = ("input_range", "max_dense_bytes", "check", "rtol", "check_samples")


def load(source: Any, *, input_shape: Sequence[int] | None = None,
         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
         **options: Any) -> Network:
    """Load a model as a :class:`~lipcert.Network`.

    Parameters
    ----------
    source : str, Path, torch.nn.Module or Network
        A path to an ``.onnx`` file; a ``torch.nn.Module`` in eval mode (``input_shape`` is
        then required); a path to a ``.pt``/``.pth`` file holding a whole pickled module
        (unpickling runs code: load only files you trust; a file holding a state_dict raises
        an error explaining how to load it); or a ``.npz`` of weight matrices.
    input_shape : sequence of int, optional
        Shape of one input without the batch axis, e.g. ``(1, 28, 28)``.  Required for torch
        modules; for ONNX only when the model's input has symbolic dimensions besides the batch.
    mean, std : float or sequence of float, optional
        Prepend the normalization ``(x - mean) / std`` (one value, or one per channel on the
        channel axis: axis 0 of an input (C, H, W), the last axis of an NHWC input), so the
        Network and its Lipschitz constant refer to raw inputs (e.g. pixels in [0, 1]).
    **options
        ``input_range`` -- (low, high) of valid raw inputs, or None; default ``"auto"``:
        (0, 1) when mean/std are given or one input looks like an image ((C, H, W) or
        (H, W, C) with C in {1, 3, 4} and H, W >= 8), otherwise None (unknown).
        ``max_dense_bytes`` -- limit on the total size of the dense float64 weight
        matrices (default 4e9); a larger model raises ModelLoadError with the estimate.
        ``check`` -- compare the Network with the original model (onnxruntime, or the torch
        module) on ``check_samples`` (16) random inputs in the input range and raise
        ModelLoadError if they differ by more than ``rtol`` (1e-4 for float32 models,
        1e-8 for float64) times the largest output; default True.

    Returns
    -------
    Network
        With ``info["input_space"]`` (what the Lipschitz constant refers to),
        ``info["conversion_error"]`` (largest measured difference from the original, or None
        when not checked) and ``info["preprocessing"]``.

    Raises
    ------
    ModelLoadError
        Missing, corrupt or unsupported file; a state_dict; a model too large to
        materialize; a failed conversion check.
    UnsupportedOperatorError
        Operators outside the chain of affine maps and elementwise slope-restricted
        activations (MaxPool, residual Add, Concat of branches, ...); every one is listed.
    """
    if isinstance(source, Network):
        return source
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"load() got unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    import torch

    if isinstance(source, torch.nn.Module):
        from .adapters.torch import from_module

        return from_module(source, input_shape=input_shape, mean=mean, std=std, **options)
    if not isinstance(source, str | Path):
        raise ModelLoadError(f"cannot load a {type(source).__name__}: expected a path, a torch.nn.Module or a Network")
    from .adapters.files import read

    return read(source, input_shape=input_shape).network(mean=mean, std=std, **options)


def as_network(model: Any, x: Any = None, *, input_shape: Sequence[int] | None = None,
               mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
               verb: str = "this verb") -> Network:
    """The model of a verb as a :class:`~lipcert.Network`: the one coercion at every verb's boundary.

    Parameters
    ----------
    model : Network, str, Path or torch.nn.Module
        As :func:`load` takes it; a Network passes through unchanged.
    x : array (N, *input_shape), optional
        The verb's inputs: a torch module's ``input_shape`` is read from them when not given.
    input_shape, mean, std
        As for :func:`load`.
    verb : str
        Name of the calling verb, for the error message.

    Raises
    ------
    ModelLoadError
        A torch module with neither inputs nor ``input_shape`` (its input shape is unknown), or
        any error of :func:`load`.
    """
    if isinstance(model, Network):  # operator layers (convolutions): only lipschitz takes them as they are
        return require_network(model, verb, operators=verb == "lipschitz")
    import torch

    if isinstance(model, torch.nn.Module) and input_shape is None:
        if x is None:
            raise ModelLoadError(f"{verb} got a torch module but no input shape: pass input_shape=(...) (one input "
                                 "without the batch axis, e.g. (1, 28, 28)) or load it first with "
                                 "lipcert.load(module, input_shape=...)")
        input_shape = tuple(int(s) for s in getattr(x, "shape", np.shape(x))[1:])
    return load(model, input_shape=input_shape, mean=mean, std=std)
