"""Steps shared by the adapters: prepended normalization, input range, conversion check.

Conventions (documented for users in :func:`lipcert.load`):

* ``mean``/``std`` prepend ``(x - mean) / std`` (per channel) to the model, so the Network,
  and every Lipschitz constant of it, refers to raw inputs.
* The input range recorded on the Network is, unless given: ``(0, 1)`` when mean/std are
  given (raw pixels) or when one input looks like an image (C, H, W) or (H, W, C) with
  C in {1, 3, 4} and H, W >= 8; ``None`` (unknown) otherwise.
* Every conversion is checked: the Network's own forward pass is compared with the original
  model (onnxruntime or the torch module) on random inputs in the input range (standard
  normal inputs when the range is unknown), and the largest difference is stored in
  ``info["conversion_error"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lipcert.errors import ModelLoadError, NonFiniteWeightsError
from lipcert.graph import AnyNetwork

from .graph import DEFAULT_MAX_DENSE_BYTES, Conversion, Layer, build_network
from .residual import build_graph, has_merges

RangeOption = tuple[float, float] | None | Literal["auto"]
Reference = Callable[[np.ndarray], np.ndarray]
"""Runs the original model on a float64 batch (B, *input_shape) of *raw* inputs; returns (B, n_out)."""

FLOAT32_RTOL = 1e-4
FLOAT64_RTOL = 1e-8


def as_channels(values: Sequence[float] | float | None, what: str) -> np.ndarray | None:
    """mean or std as a 1-D float64 array (None stays None)."""
    if values is None:
        return None
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ModelLoadError(f"{what} must be a finite number or a list of per-channel numbers, got {values!r}")
    return arr


def channel_axis(input_shape: Sequence[int], channels: int, channels_last: bool) -> int | None:
    """Axis of one input (shape without batch axis) holding ``channels`` channels (None for one shared value).

    ``channels_last`` is True when the model starts by moving its last axis to the channel
    position (an NHWC input followed by a Transpose).
    """
    if channels == 1:
        return None
    if len(input_shape) == 0:
        raise ModelLoadError(f"mean/std have {channels} channels but the model takes a scalar input")
    last = len(input_shape) - 1
    if channels_last and input_shape[-1] == channels:
        return last
    if input_shape[0] == channels:
        return 0
    if input_shape[-1] == channels:
        return last
    raise ModelLoadError(f"cannot tell which axis of the input shape {tuple(input_shape)} holds the "
                         f"{channels} channels of mean/std: expected channels first (NCHW) or last (NHWC)")


def normalization_layer(mean: np.ndarray | None, std: np.ndarray | None, conv: Conversion,
                        channels_last: bool) -> Layer:
    """An affine first layer computing ``(x - mean) / std`` per channel."""
    m = np.zeros(1) if mean is None else mean
    s = np.ones(1) if std is None else std
    if (s <= 0).any():
        raise ModelLoadError(f"std must be positive, got {s.tolist()}")
    if m.size != s.size and 1 not in (m.size, s.size):
        raise ModelLoadError(f"mean has {m.size} entries but std has {s.size}")
    channels = max(m.size, s.size)
    axis = channel_axis(conv.input_shape, channels, channels_last)
    sample_shape = conv.sample_shape
    offset = len(sample_shape) - len(conv.input_shape)
    view = [1] * len(sample_shape)
    if axis is not None:
        view[axis + offset] = channels
    m_t = torch.as_tensor(np.broadcast_to(m, (channels,)).copy()).reshape(view)
    inv_s = (1.0 / torch.as_tensor(np.broadcast_to(s, (channels,)).copy())).reshape(view)

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        return (x - m_t) * inv_s if with_bias else x * inv_s

    where = "" if axis is None else f", channels on axis {axis} of the input"
    return Layer("input normalization", "(x-mean)/std", "raw input", conv.input_name, sample_shape, sample_shape,
                 fn=fn, detail=f"mean={m.tolist()}, std={s.tolist()}{where}")


def default_input_range(input_shape: Sequence[int], normalized: bool) -> tuple[float, float] | None:
    """(0, 1) for raw pixels (mean/std given) or image-shaped inputs; None otherwise."""
    if normalized:
        return (0.0, 1.0)
    if len(input_shape) == 3:
        c_first, c_last = input_shape[0] in (1, 3, 4), input_shape[-1] in (1, 3, 4)
        if (c_first and min(input_shape[1:]) >= 8) or (c_last and min(input_shape[:2]) >= 8):
            return (0.0, 1.0)
    return None


def input_space(conv: Conversion, mean: np.ndarray | None, std: np.ndarray | None,
                input_range: tuple[float, float] | None, range_given: bool) -> str:
    """The sentence stored as ``info['input_space']``."""
    shape = "x".join(map(str, conv.input_shape))
    if input_range is None:
        values = "values unbounded (unknown range)"
    else:
        values = f"values in [{input_range[0]:g}, {input_range[1]:g}]" + ("" if range_given else " (assumed)")
    if mean is not None or std is not None:
        return (f"raw inputs of shape {shape}, {values}, before the normalization (x - mean) / std with "
                f"mean={[] if mean is None else mean.tolist()}, std={[] if std is None else std.tolist()}")
    return f"the model's input {conv.input_name!r} of shape {shape}, {values}"


def sample_inputs(input_shape: Sequence[int], input_range: tuple[float, float] | None, samples: int,
                  seed: int) -> np.ndarray:
    """Random raw inputs (float64) for the conversion check."""
    gen = np.random.default_rng(seed)
    shape = (samples, *input_shape)
    if input_range is None:
        return gen.standard_normal(shape)
    lo, hi = input_range
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return np.clip(gen.standard_normal(shape), lo, hi)
    return gen.uniform(lo, hi, shape)


def require_finite(arrays: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Refuse (NonFiniteWeightsError) the first floating array holding NaN or inf, named by ``where(name)``."""
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise NonFiniteWeightsError(f"{where(name)} has {bad} non-finite weights (NaN or inf) of {arr.size}; "
                                        "the model file is corrupt or its training diverged")


def check_conversion(net: AnyNetwork, reference: Reference, *, input_range: tuple[float, float] | None,
                     samples: int, rtol: float, source: str, seed: int = 0) -> dict[str, Any]:
    """Compare ``net`` with the original model; raise ModelLoadError when they differ.

    The tolerance is ``rtol`` times the largest absolute output of the original model (at
    least ``rtol``).  Returns the measured differences for ``Network.info``.
    """
    x = sample_inputs(net.input_shape, input_range, samples, seed)
    raw = np.asarray(reference(x), dtype=np.float64)
    if raw.ndim == 0 or raw.shape[0] != samples:
        raise ModelLoadError(f"{source}: the model returns an output of shape {raw.shape} for a batch of {samples} "
                             "inputs; lipcert certifies classifiers that return one vector of logits per input")
    expected = raw.reshape(samples, -1)
    got = np.asarray(net(x), dtype=np.float64).reshape(samples, -1)
    if expected.shape != got.shape:
        raise ModelLoadError(f"{source}: the converted network has {got.shape[1]} outputs but the model has "
                             f"{expected.shape[1]}")
    scale = max(float(np.abs(expected).max()), 1.0)
    error = float(np.abs(got - expected).max())
    if not error <= rtol * scale:  # also catches NaN
        raise ModelLoadError(
            f"{source}: conversion check failed: on {samples} random inputs the converted network differs from "
            f"the original model by up to {error:.3g} (largest output {scale:.3g}, tolerance {rtol:g} relative). "
            "Some operator was not converted faithfully; please report this model. Pass check=False to skip the "
            "check at your own risk, or rtol=... if the model computes in low precision")
    return {"conversion_error": error, "conversion_rel_error": error / scale, "conversion_samples": samples,
            "output_shape": list(raw.shape[1:])}


def finish(conv: Conversion, reference: Reference | None, *, mean: Sequence[float] | float | None,
           std: Sequence[float] | float | None, input_range: RangeOption, max_dense_bytes: int | None,
           check: bool, rtol: float | None, reference_dtype: torch.dtype, check_samples: int,
           channels_last: bool, info: dict[str, Any], dense: bool = False) -> AnyNetwork:
    """Prepend the normalization, build the Network (a GraphNetwork when the model has residual connections,
    adapters/residual.py; its layers dense), check it against ``reference`` and record provenance.

    Convolutions stay :class:`~lipcert.operators.Conv2dOperator` layers unless ``dense`` (docs/decisions.md 35).

    ``reference`` evaluates the original model on *normalized* inputs (what it consumes).
    """
    conv.raise_issues()
    m, s = as_channels(mean, "mean"), as_channels(std, "std")
    normalized = m is not None or s is not None
    norm = normalization_layer(m, s, conv, channels_last) if normalized else None
    if norm is not None:
        conv = conv.with_first_layer(norm)
    range_given = input_range != "auto"
    rng = default_input_range(conv.input_shape, normalized) if input_range == "auto" else input_range
    if rng is not None:
        rng = (float(rng[0]), float(rng[1]))
        if not rng[0] < rng[1]:
            raise ModelLoadError(f"input_range must be (low, high) with low < high, got {rng}")
    info = {**info, "input_space": input_space(conv, m, s, rng, range_given),
            "preprocessing": None if not normalized else {"mean": None if m is None else m.tolist(),
                                                          "std": None if s is None else s.tolist()},
            "notes": list(conv.notes)}
    limit = DEFAULT_MAX_DENSE_BYTES if max_dense_bytes is None else int(max_dense_bytes)
    net = (build_graph(conv, max_dense_bytes=limit, input_range=rng, info=info, operators=not dense)
           if has_merges(conv) else
           build_network(conv, max_dense_bytes=limit, input_range=rng, info=info, operators=not dense))
    if not check or reference is None:
        return net.with_info(conversion_error=None)
    tol = rtol if rtol is not None else (FLOAT64_RTOL if reference_dtype == torch.float64 else FLOAT32_RTOL)

    def raw_reference(x: np.ndarray) -> np.ndarray:
        if norm is not None and norm.fn is not None:
            # (B, *input_shape) broadcasts against the per-sample constants of the layer
            x = norm.fn(torch.from_numpy(x), True).numpy()
        return reference(x)

    found = check_conversion(net, raw_reference, input_range=rng, samples=check_samples, rtol=tol,
                             source=conv.source)
    return net.with_info(**found, conversion_rtol=tol)
