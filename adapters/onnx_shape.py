"""ONNX shape and layout operators (reshapes, transposes, selections, padding): linear maps.

Each handler follows the ONNX specification of its operator for opsets 9 to 21, reading
attributes that moved to inputs between opsets from either place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .graph import AffineOp, NotCovered, Op
from .onnx_node import OnnxNode, linear, required, t64, torch_pad

def _reshape_to(shape: Sequence[int], detail: str = "") -> list[Op]:
    target = tuple(int(s) for s in shape)
    return [linear(lambda x: x.reshape(target), detail or f"to {target}")]


def flatten(node: OnnxNode) -> list[Op]:
    axis = int(node.attr("axis", 1))
    axis = axis + len(node.shape) if axis < 0 else axis
    return _reshape_to((math.prod(node.shape[:axis]), math.prod(node.shape[axis:])), f"axis {axis}")


def reshape(node: OnnxNode) -> list[Op]:
    target = node.const(1, "target shape")
    if target is None:
        raise NotCovered("Reshape without a target shape")
    allow_zero = int(node.attr("allowzero", 0))
    dims = [int(d) for d in target.reshape(-1)]
    dims = [node.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(node.shape) // known if known else 0
    if math.prod(dims) != math.prod(node.shape):
        raise NotCovered(f"cannot reshape {node.shape} to {dims}")
    return _reshape_to(dims)


def squeeze(node: OnnxNode) -> list[Op]:
    axes = node.ints("axes", 1, "axes")
    rank = len(node.shape)
    drop = {a % rank for a in axes} if axes else {i for i, s in enumerate(node.shape) if s == 1}
    return _reshape_to([s for i, s in enumerate(node.shape) if i not in drop], f"axes {sorted(drop)}")


def unsqueeze(node: OnnxNode) -> list[Op]:
    axes = node.ints("axes", 1, "axes") or []
    rank = len(node.shape) + len(axes)
    add_at = {a % rank for a in axes}
    dims, it = [], iter(node.shape)
    for i in range(rank):
        dims.append(1 if i in add_at else next(it))
    return _reshape_to(dims, f"axes {sorted(add_at)}")


def transpose(node: OnnxNode) -> list[Op]:
    perm = list(node.attr("perm") or reversed(range(len(node.shape))))
    return [linear(lambda x: x.permute(perm), f"perm {perm}")]


def identity(node: OnnxNode) -> list[Op]:
    return []


def dropout(node: OnnxNode) -> list[Op]:
    training = node.const(2, "training_mode") if node.opset >= 12 else None
    if training is not None and bool(training.reshape(-1)[0]):
        raise NotCovered("training_mode=True drops random entries; export the model in eval mode")
    return []


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}


def cast(node: OnnxNode) -> list[Op]:
    to = int(node.attr("to"))
    if to in _FLOAT_TYPES:
        return []
    name = onnx.TensorProto.DataType.Name(to)
    raise NotCovered(f"Cast to {name} rounds the values, which is not the affine map lipcert needs")


def pad(node: OnnxNode) -> list[Op]:
    rank = len(node.shape)
    mode = str(node.attr("mode", "constant"))
    if node.opset < 11:
        pads = list(node.attr("pads"))
        value = float(node.attr("value", 0.0))
    else:
        arr = node.const(1, "pads")
        if arr is None:
            raise NotCovered("Pad without pads")
        pads = arr.reshape(-1).tolist()
        cv = node.const(2, "constant value")
        value = 0.0 if cv is None or cv.size == 0 else float(cv.reshape(-1)[0])
    axes = node.ints(None, 3, "axes") if node.opset >= 18 else None
    axes = [a % rank for a in axes] if axes else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begins[a], ends[a] = int(pads[k]), int(pads[k + len(axes)])
    if mode == "constant":
        pads_t = torch_pad(begins, ends)
        return [AffineOp(lambda x, b: F.pad(x, pads_t, value=value if b else 0.0), 0,
                         f"pads {begins + ends}, value {value:g}")]
    modes = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise NotCovered(f"pad mode {mode!r} is not supported")
    first = next((i for i in range(rank) if begins[i] or ends[i]), rank)
    if first == rank:
        return []
    k = max(rank - first, rank - 2, 1)  # torch pads the last 1-3 axes of a tensor with 1-2 more axes
    if k > 3 or min(begins + ends) < 0:
        raise NotCovered(f"{mode} padding of axes {list(range(first, rank))} is not supported (at most the last "
                         "three axes, no negative pads)")
    pads_t = torch_pad(begins[rank - k:], ends[rank - k:])
    return [linear(lambda x: F.pad(x, pads_t, mode=modes[mode]), f"{mode} pads {begins + ends}")]


def slice_(node: OnnxNode) -> list[Op]:
    if node.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = node.attr("axes"), None
    else:
        starts = node.ints(None, 1, "starts") or []
        ends = node.ints(None, 2, "ends") or []
        axes, steps = node.ints(None, 3, "axes"), node.ints(None, 4, "steps")
    rank = len(node.shape)
    axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    steps = list(steps) if steps is not None else [1] * len(starts)
    picks: list[tuple[int, torch.Tensor]] = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise NotCovered("a slice step of 0 is invalid")
        idx = list(range(node.shape[a]))[slice(int(s), int(e), int(st))]
        picks.append((a, torch.tensor(idx, dtype=torch.long)))

    def fn(x: torch.Tensor) -> torch.Tensor:
        for a, idx in picks:
            x = x.index_select(a, idx)
        return x

    return [linear(fn, f"axes {axes}, starts {starts}, ends {ends}, steps {steps}")]


def gather(node: OnnxNode) -> list[Op]:
    if node.dyn != 0:
        raise NotCovered("its indices are computed from the input (data-dependent indexing)")
    indices = node.const(1, "indices")
    if indices is None:
        raise NotCovered("Gather without indices")
    rank = len(node.shape)
    axis = int(node.attr("axis", 0)) % rank
    idx = np.where(indices < 0, indices + node.shape[axis], indices).astype(np.int64)
    flat = torch.as_tensor(idx.reshape(-1))
    out_shape = node.shape[:axis] + tuple(idx.shape) + node.shape[axis + 1:]
    return [linear(lambda x: x.index_select(axis, flat).reshape(out_shape), f"axis {axis}, {idx.size} indices")]


def concat(node: OnnxNode) -> list[Op]:
    axis = int(node.attr("axis"))
    parts = [None if i == node.dyn else t64(required(node, i)) for i in range(len(node.inputs))]
    zeros = [None if p is None else torch.zeros_like(p) for p in parts]

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        chosen = parts if with_bias else zeros
        return torch.cat([x if p is None else p for p in chosen], dim=axis)

    return [AffineOp(fn, sum(p.numel() for p in parts if p is not None), f"axis {axis}, with constants")]


def expand(node: OnnxNode) -> list[Op]:
    target = node.const(1, "shape")
    if target is None:
        raise NotCovered("Expand without a shape")
    out = tuple(np.broadcast_shapes(node.shape, tuple(int(v) for v in target.reshape(-1))))
    return [linear(lambda x: x.expand(out), f"to {out}")]


def tile(node: OnnxNode) -> list[Op]:
    reps = node.const(1, "repeats")
    if reps is None:
        raise NotCovered("Tile without repeats")
    r = [int(v) for v in reps.reshape(-1)]
    return [linear(lambda x: x.repeat(*r), f"repeats {r}")]


def _block_size(node: OnnxNode) -> tuple[int, int, int, int, int]:
    """The block size and the ``(N, C, H, W)`` input shape of DepthToSpace / SpaceToDepth."""
    b = int(node.attr("blocksize", 0))
    if len(node.shape) != 4 or b < 1:
        raise NotCovered(f"needs a 4-D (N, C, H, W) input and a positive blocksize, got shape {node.shape}, "
                         f"blocksize {b}")
    return b, *(int(s) for s in node.shape)  # type: ignore[return-value]


def depth_to_space(node: OnnxNode) -> list[Op]:
    """Moves ``b*b`` channel blocks into ``b x b`` spatial blocks: a permutation (ONNX DCR or CRD order)."""
    b, n, c, h, w = _block_size(node)
    mode = str(node.attr("mode", "DCR"))
    if c % (b * b) or mode not in ("DCR", "CRD"):
        raise NotCovered(f"mode {mode!r} with {c} channels and blocksize {b} (DCR or CRD, channels divisible "
                         f"by blocksize^2 are supported)")
    split, perm = (((n, b, b, c // b**2, h, w), (0, 3, 4, 1, 5, 2)) if mode == "DCR"
                   else ((n, c // b**2, b, b, h, w), (0, 1, 4, 2, 5, 3)))
    out = (n, c // b**2, h * b, w * b)
    return [linear(lambda x: x.reshape(split).permute(perm).reshape(out), f"blocksize {b}, mode {mode}")]


def space_to_depth(node: OnnxNode) -> list[Op]:
    """Moves ``b x b`` spatial blocks into channels, block offset major: a permutation."""
    b, n, c, h, w = _block_size(node)
    if h % b or w % b:
        raise NotCovered(f"spatial size {h}x{w} is not divisible by blocksize {b}")
    split, out = (n, c, h // b, b, w // b, b), (n, c * b * b, h // b, w // b)
    return [linear(lambda x: x.reshape(split).permute(0, 3, 5, 1, 2, 4).reshape(out), f"blocksize {b}")]
