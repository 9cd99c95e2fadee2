"""``lipcert.load``: any supported model source to a :class:`~lipcert.Network`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError
from .graph import GraphNetwork
from .network import Network, require_network

OPTIONS = ("input_range", "max_dense_bytes", "dense", "check", "rtol", "check_samples")


def load(source: Any, *, input_shape: Sequence[int] | None = None,
         mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
         weights: str | Path | None = None, model_args: Mapping[str, Any] | Sequence[Any] | None = None,
         model_path: str | Path | Sequence[str | Path] | None = None, **options: Any) -> Network | GraphNetwork:
    """Load a model as a :class:`~lipcert.Network`, or a :class:`~lipcert.graph.GraphNetwork` when it has
    residual blocks (docs/decisions.md 28).

    Parameters
    ----------
    source : str, Path, class, torch.nn.Module or Network
        A path to an ``.onnx`` file; a ``torch.nn.Module`` in eval mode (``input_shape`` is
        then required); a path to a ``.pt``/``.pth`` file holding a whole pickled module
        (unpickling runs code: load only files you trust); a ``.npz`` of weight matrices; or
        a model class, as ``"module:Class"``, ``"path/file.py:Class"`` or the class itself
        (any callable returning a module), built with ``model_args`` and given ``weights``.
    weights : str or Path, optional
        A state_dict file for a model class (or a module): plain, or a checkpoint dict holding
        it under ``state_dict``/``model``/...; DataParallel ``module.`` prefixes are removed.
    model_args : mapping or sequence, optional
        Keyword (mapping) or positional (sequence) arguments of the model class.
    model_path : str, Path or sequence of them, optional
        Folder(s) where the model class's module or ``file.py`` is looked up first.
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
        Convolutions (2-D, one per layer, with any per-channel scaling before or after them
        folded in) are kept as :class:`~lipcert.operators.Conv2dOperator` layers and count
        nothing toward it; the bound methods choose the dense or matrix-free path by their memory
        estimate (``extras["path"]``).
        ``dense`` -- materialize every convolution as a dense matrix at load (the behaviour
        before operator layers); default False.
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
        Missing, corrupt or unsupported file; a state_dict without its class; a model too large to
        materialize; a failed conversion check.
    UnsupportedOperatorError
        Operators outside the chain of affine maps and elementwise slope-restricted
        activations (residual Add, Concat of branches, ...); every one is listed.
    CheckpointMismatchError
        ``weights`` that do not fit the model class (every missing, unexpected, misshapen key named).
    """
    if isinstance(source, Network | GraphNetwork):
        return source
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"load() got unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    import torch

    from .adapters.checkpoint import build_module, is_class_spec

    is_class = isinstance(source, type) and issubclass(source, torch.nn.Module)
    if weights is not None or is_class or is_class_spec(source):
        source = build_module(source, weights=weights, model_args=model_args, model_path=model_path)
    elif model_args is not None or model_path is not None:
        raise ModelLoadError("model_args and model_path are for a model class ('module:Class' with weights=)")
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
    GraphNetworkError
        The model has residual blocks and ``verb`` needs a chain.
    """
    net = as_model(model, x, input_shape=input_shape, mean=mean, std=std, verb=verb)
    return net if isinstance(net, Network) else require_network(net, verb)


def as_model(model: Any, x: Any = None, *, input_shape: Sequence[int] | None = None,
             mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
             verb: str = "this verb") -> Network | GraphNetwork:
    """As :func:`as_network`, for the verbs that also take a :class:`~lipcert.graph.GraphNetwork`
    (residual blocks: ``lipschitz``, ``lower_bound``, ``certify``); a graph passes through unchanged."""
    if isinstance(model, Network | GraphNetwork):  # operator layers pass: what needs dense matrices densifies them
        return model
    import torch

    if isinstance(model, torch.nn.Module) and input_shape is None:
        if x is None:
            raise ModelLoadError(f"{verb} got a torch module but no input shape: pass input_shape=(...) (one input "
                                 "without the batch axis, e.g. (1, 28, 28)) or load it first with "
                                 "lipcert.load(module, input_shape=...)")
        input_shape = tuple(int(s) for s in getattr(x, "shape", np.shape(x))[1:])
    return load(model, input_shape=input_shape, mean=mean, std=std)
