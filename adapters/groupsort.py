"""GroupSort-type activations as affine maps around ``abs_or_identity`` layers (docs/decisions.md 19, 20).

Two ways in.  Torch modules of deel-torchlip (``GroupSort``, ``GroupSort2``, ``FullSort``,
``HouseHolder``, its ``MaxMin``, which is cat(relu(x), relu(-x))) and orthogonium (``MaxMin``,
``HouseHolder``, ``Abs``) are recognized by their class (:func:`module_ops`; they are fx leaves,
:func:`is_leaf`).  An ONNX or fx subgraph (Reshape + ReduceMax/ReduceMin + Concat, Split + Max/Min,
TopK, ...) is recognized by what it computes (:func:`identify`): its values on random samples
are compared with every sorting activation on the channel axis that fits the shape, and the
match must hold to 1e-12 (the whole conversion is checked against the original model later).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lipcert import sorting
from lipcert.activations import abs_or_identity, get_activation, relu

from .graph import AffineOp, NotCovered, Op

Region = Callable[[torch.Tensor], torch.Tensor]
"""A subgraph's function on a batch of per-sample tensors (B, *shape) -> (B, *shape)."""

_IDENTIFY_SAMPLES = 32
_IDENTIFY_TOL = 1e-12


def _channel_map(matrix: torch.Tensor, axis: int, scale: float = 1.0) -> AffineOp:
    """x -> scale * (matrix applied to the channel axis ``axis`` of one sample)."""
    m = (scale * matrix).to(torch.float64)

    def fn(x: torch.Tensor, _with_bias: bool) -> torch.Tensor:
        return torch.movedim(torch.movedim(x, axis, -1) @ m.T.to(x.dtype), -1, axis)

    return AffineOp(fn, 0, f"orthogonal map of {m.shape[0]} channels (axis {axis})")


def _flat_mask(mask: tuple[bool, ...], shape: tuple[int, ...], axis: int) -> list[bool]:
    view = [1] * len(shape)
    view[axis] = len(mask)
    return torch.tensor(mask).reshape(view).expand(shape).reshape(-1).tolist()


def stage_ops(stages: list[sorting.Stage], shape: tuple[int, ...], axis: int = 1, scale: float = 1.0) -> list[Op]:
    """The ops of a stage list on the channel axis of one sample of ``shape``, the output times ``scale``."""
    ops: list[Op] = []
    back = None
    for stage in stages:
        ops.append(_channel_map(stage.to if back is None else stage.to @ back, axis))
        ops.append(abs_or_identity(_flat_mask(stage.mask, shape, axis)))
        back = stage.back
    if back is not None:
        ops.append(_channel_map(back, axis, scale))
    return ops


def _axis(value: Any, shape: tuple[int, ...]) -> int:
    axis = 1 if value is None else int(value)
    axis = axis % len(shape)
    if axis == 0:
        raise NotCovered("the activation acts along the batch axis")
    return axis


def _crelu(axis: int, shape: tuple[int, ...], scale: float) -> list[Op]:
    """deel-torchlip's MaxMin: cat(relu(x), relu(-x)) along ``axis``, times ``scale``."""
    def fn(x: torch.Tensor, _with_bias: bool) -> torch.Tensor:
        return torch.cat([x, -x], dim=axis)

    out: list[Op] = [AffineOp(fn, 0, f"x, -x stacked on axis {axis}"), relu()]
    if scale != 1.0:
        out.append(AffineOp(lambda x, _b: scale * x, 0, f"{scale:g} x"))
    return out


def _coef(m: Any) -> float:
    return float(getattr(m, "_coefficient_lip", 1.0))


def _deel(name: str, m: Any, shape: tuple[int, ...]) -> list[Op]:
    if name in ("GroupSort", "GroupSort2", "FullSort"):
        channels = shape[1]
        group = m.group_size if m.group_size is not None and m.group_size <= channels else None
        return stage_ops(sorting.groupsort_stages(channels, group), shape, 1, _coef(m))
    if name == "MaxMin":
        return _crelu(_axis(getattr(m, "_dim", None), shape), shape, _coef(m))
    if name == "HouseHolder":
        return stage_ops(sorting.householder_stages(m.theta.detach()), shape, 1, _coef(m))
    raise NotCovered(f"{name} is not a deel-torchlip activation lipcert knows")


def _orthogonium(name: str, m: Any, shape: tuple[int, ...]) -> list[Op]:
    if name == "MaxMin":
        axis = _axis(m.axis, shape)
        return stage_ops(sorting.maxmin_halves_stages(shape[axis]), shape, axis)
    if name == "HouseHolder":
        return stage_ops(sorting.householder_stages(m.theta.detach()), shape, _axis(m.axis, shape), 1 / math.sqrt(2))
    if name == "Abs":
        return [get_activation("abs")]
    raise NotCovered(f"{name} is not an orthogonium activation lipcert knows")


_LIBRARIES: dict[str, tuple[tuple[str, ...], Callable[[str, Any, tuple[int, ...]], list[Op]]]] = {
    "deel.torchlip": (("GroupSort", "GroupSort2", "FullSort", "MaxMin", "HouseHolder"), _deel),
    "orthogonium": (("MaxMin", "HouseHolder", "Abs"), _orthogonium),
}


def _library(m: Any) -> tuple[str, Callable[[str, Any, tuple[int, ...]], list[Op]]] | None:
    for cls in type(m).__mro__:
        for prefix, (names, handler) in _LIBRARIES.items():
            if cls.__module__.startswith(prefix + ".") and cls.__name__ in names:
                return cls.__name__, handler
    return None


def is_leaf(m: torch.nn.Module) -> bool:
    """True for a library activation module that :func:`module_ops` converts (fx must not trace into it)."""
    return _library(m) is not None


def module_ops(m: torch.nn.Module) -> Callable[[Any, tuple[int, ...]], list[Op]] | None:
    """The handler ``(module, per-sample shape) -> ops`` of a deel-torchlip or orthogonium activation, or None."""
    found = _library(m)
    if found is None:
        return None
    name, handler = found
    return lambda module, shape: handler(name, module, shape)


# ------------------------------------------------------------------ subgraphs recognized by their values
Candidates = dict[str, tuple[list[sorting.Stage], int, Callable[[torch.Tensor], torch.Tensor]]]
"""Label -> (stages, axis, the function on batches)."""


def candidates(shape: tuple[int, ...]) -> Candidates:
    """Sorting activations along one axis of a sample of ``shape`` (its first axis is the batch axis of size 1):
    GroupSort-g ascending and descending for every g dividing the axis, FullSort, MaxMin of halves."""
    out: Candidates = {}
    for axis in range(1, len(shape)):
        out.update(_along(axis, shape[axis]))
    return out


def _along(axis: int, channels: int) -> Candidates:
    out: Candidates = {}
    for group in [g for g in range(2, channels + 1) if channels % g == 0]:
        for descending in (False, True):
            def sort(x: torch.Tensor, g: int = group, d: bool = descending) -> torch.Tensor:
                moved = torch.movedim(x, axis + 1, -1)
                grouped = moved.reshape(*moved.shape[:-1], channels // g, g)
                ordered = torch.sort(grouped, dim=-1, descending=d).values
                return torch.movedim(ordered.reshape(moved.shape), -1, axis + 1)
            label = ("FullSort" if group == channels else f"GroupSort-{group}") + (" descending" if descending else "")
            out[f"{label} (axis {axis})"] = (sorting.groupsort_stages(channels, group, descending=descending), axis,
                                             sort)
    if channels % 2 == 0:
        half = channels // 2

        def halves(x: torch.Tensor) -> torch.Tensor:
            a, b = torch.split(x, half, dim=axis + 1)
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=axis + 1)
        out[f"MaxMin of halves (axis {axis})"] = (sorting.maxmin_halves_stages(channels), axis, halves)
    return out


def identify(region: Region, shape: tuple[int, ...], seed: int = 0) -> tuple[str, list[Op]] | None:
    """The sorting activation that ``region`` computes on one sample of ``shape`` (name and ops), or None."""
    gen = torch.Generator().manual_seed(seed)
    # float32-representable samples: a float32 region (an ONNX export) computes them exactly
    x = torch.randn(_IDENTIFY_SAMPLES, *shape, generator=gen, dtype=torch.float64).float().double()
    try:
        with torch.no_grad():
            y = region(x)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    scale = float(y.abs().max()) if y.numel() else 0.0
    if tuple(y.shape) != tuple(x.shape):
        for axis in range(1, len(shape)):  # CReLU (deel-torchlip's MaxMin): cat(relu(x), relu(-x))
            stacked = torch.cat([torch.relu(x), torch.relu(-x)], dim=axis + 1)
            if stacked.shape == y.shape and float((stacked - y).abs().max()) <= _IDENTIFY_TOL * max(scale, 1.0):
                return "CReLU", _crelu(axis, shape, 1.0)
        return None
    for label, (stages, axis, fn) in candidates(shape).items():
        if float((fn(x) - y).abs().max()) <= _IDENTIFY_TOL * max(scale, 1.0):
            return label, stage_ops(stages, shape, axis)
    return None
