"""Checking a batch of inputs and labels, and counts and numbers given as arguments, before anything is computed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import InvalidArgumentError, ShapeMismatchError


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool), else InvalidArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """``value`` as a finite float >= ``minimum``, else InvalidArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not math.isfinite(value) or value < minimum:
        raise InvalidArgumentError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def checked_batch(x: Any, y: Any, input_shape: tuple[int, ...], outputs: int) -> tuple[torch.Tensor, np.ndarray]:
    """Inputs as a tensor of shape (N, *input_shape) and labels as int64 in 0..outputs-1.

    ``x`` may be an array or tensor of shape (N, *input_shape) or flattened (N, prod(input_shape)),
    in any real dtype (kept), finite; ``y`` integer labels of shape (N,) (integral floats accepted).
    Raises :class:`~lipcert.errors.ShapeMismatchError` naming what is wrong, also for a network with
    a single output (one logit z has no margin f_y - f_j between classes).
    """
    if outputs < 2:
        raise ShapeMismatchError(
            f"the network has {outputs} output: a single logit z has no margin between classes to certify. For a "
            "binary classifier that decides by the sign of z, certify the two-logit network (-z, z), whose "
            "margin is 2|z|: net.with_last_layer(np.vstack([-W, W]), np.concatenate([-b, b])) with W, b = "
            "net.weights[-1], net.biases[-1], and labels 0 (z < 0) and 1 (z > 0)")
    try:
        xt = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeMismatchError(f"inputs must be a numeric array: {exc}") from exc
    if xt.dtype == torch.bool or xt.is_complex() or not (xt.is_floating_point() or xt.dtype in _INTEGER):
        raise ShapeMismatchError(f"inputs must be real numbers (a float or integer dtype), got dtype {xt.dtype}")
    size = math.prod(input_shape)
    if xt.ndim == 0 or (tuple(xt.shape[1:]) != tuple(input_shape) and tuple(xt.shape[1:]) != (size,)):
        raise ShapeMismatchError(f"the network takes inputs of shape (N, {', '.join(map(str, input_shape))}) "
                                 f"(or (N, {size}) flattened); got {tuple(xt.shape)}")
    if xt.is_floating_point() and not bool(torch.isfinite(xt).all()):
        bad = int((~torch.isfinite(xt.reshape(xt.shape[0], -1))).any(dim=1).nonzero()[0, 0])
        raise ShapeMismatchError(f"input {bad} contains NaN or infinite values")
    labels = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    real = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    if labels.dtype == bool or not real:
        raise ShapeMismatchError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != xt.shape[0]:
        raise ShapeMismatchError(f"labels must have shape ({xt.shape[0]},), got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.asarray(labels, dtype=np.float64) == np.round(labels.astype(np.float64))):
            raise ShapeMismatchError("labels must be integers")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= outputs):
        bad = labels[(labels < 0) | (labels >= outputs)][0]
        raise ShapeMismatchError(f"label {bad} is out of range: the network has {outputs} outputs "
                                 f"(labels 0..{outputs - 1})")
    return xt.reshape(xt.shape[0], *input_shape), labels
