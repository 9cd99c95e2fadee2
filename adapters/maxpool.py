"""Max pooling as an exact chain of affine maps and ReLUs.

The max of a window is computed by a tree of pairwise maxima, each written with ReLUs only:

    max(a, b) = (relu(a - b) + relu(b - a) + relu(a + b) - relu(-a - b)) / 2,   a = relu(a) - relu(-a),

with the last unit (and relu(-a)) dropped when the input is the output of a nonnegative activation.
One tree level is an affine map (differences and sums), a ReLU layer, and an affine map that adds
the units up; a window of K entries takes ceil(log2 K) levels.  The rewritten chain computes the
same function as the pooling for every input (not an over-approximation), so every bound on its
Lipschitz constant bounds the original model, overlapping windows (stride < kernel) included, and
every closed form applies unchanged.  Windows are index lists: padding (including ONNX ``auto_pad``
and ``ceil_mode``) only shortens a window, as padding with -inf does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lipcert.activations import Activation, relu

from .graph import DYNAMIC, AffineOp, Layer, NotCovered, Op

Positions = list[list[int]]
"""For each output position along one axis, the input positions its window covers."""


def pooled_positions(length: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
                     ceil_mode: bool = False) -> Positions:
    """The windows of one axis, as PyTorch's max_pool counts them (the last window starts inside the input
    or its left padding); positions in the padding are left out."""
    span = dilation * (kernel - 1) + 1
    room = length + pad_begin + pad_end - span
    if room < 0:
        raise NotCovered(f"its window ({span} wide with dilation) is larger than the padded input ({length} + pads)")
    out = (math.ceil(room / stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= length + pad_begin:
        out -= 1
    windows = []
    for i in range(out):
        start = i * stride - pad_begin
        window = [p for p in range(start, start + span, dilation) if 0 <= p < length]
        if not window:
            raise NotCovered(f"output {i} of an axis of length {length} has a window entirely in the padding")
        windows.append(window)
    return windows


def adaptive_positions(length: int, out: int) -> Positions:
    """The windows of adaptive max pooling: output i covers [floor(i L / O), ceil((i + 1) L / O))."""
    return [list(range((i * length) // out, -((-(i + 1) * length) // out))) for i in range(out)]


class MaxTree(list[Op]):
    """The ops of a max tree, with what is needed to rebuild them for nonnegative inputs (:func:`for_input`)."""

    def __init__(self, ops: Sequence[Op], shape: tuple[int, ...], axes: Sequence[Positions]) -> None:
        super().__init__(ops)
        self.shape, self.axes = shape, list(axes)


def max_pool_ops(shape: Sequence[int], axes: Sequence[Positions], nonnegative: bool = False) -> MaxTree:
    """The chain computing max pooling of a tensor of ``shape`` over its last ``len(axes)`` axes.

    ``axes[d][i]`` are the input positions along spatial axis d of output position i; the leading
    axes (batch, channels) are pooled separately.  Each pairwise max is
    max(a, b) = (relu(a - b) + relu(b - a) + relu(a + b) - relu(-a - b)) / 2, or without the last
    unit when every input is nonnegative (then relu(a + b) = a + b); its slope class then holds only
    maps of norm <= 1 per pair (<= 1.58 with the signed form).
    """
    shape = tuple(int(s) for s in shape)
    nd = len(axes)
    lead, spatial = shape[:-nd], shape[-nd:]
    out_spatial = tuple(len(a) for a in axes)
    strides = np.cumprod((1,) + spatial[::-1])[:-1][::-1]  # row-major strides of the spatial axes
    offsets = []
    for combo in itertools.product(*axes):  # every output position, row-major
        grid = np.array(list(itertools.product(*combo)), dtype=np.int64).reshape(-1, nd)
        offsets.append(grid @ strides)
    width = max(len(o) for o in offsets)
    per_channel = np.full((len(offsets), width), -1, dtype=np.int64)
    for k, o in enumerate(offsets):
        per_channel[k, :len(o)] = o
    size = math.prod(spatial)
    rows = np.concatenate([np.where(per_channel >= 0, per_channel + c * size, -1) for c in range(math.prod(lead))])
    ops: list[Op] = []
    levels = max(0, math.ceil(math.log2(width)))
    for level in range(levels):
        rows, diff, combine = _level(rows, nonnegative)
        ops += [_gather(*diff, f"max tree level {level + 1}/{levels}: differences"), relu(),
                _sum(*combine, f"max tree level {level + 1}/{levels}: sums")]
    final = torch.as_tensor(rows[:, 0])
    out_shape = (*lead, *out_spatial)
    ops.append(AffineOp(lambda x, _b: x.reshape(1, -1).index_select(1, final).reshape(out_shape), 0,
                        f"window maxima to {'x'.join(map(str, out_shape))}"))
    return MaxTree(ops, shape, axes)


NONNEGATIVE = ("relu", "relu6", "sigmoid", "abs")
"""Activations whose outputs are >= 0 (also every softplus)."""


def for_input(ops: Sequence[Op], layers: Sequence[Layer], source: str) -> Sequence[Op]:
    """``ops``, rebuilt for nonnegative inputs when they are a max tree that reads (tensor ``source``) the
    output of an activation layer in :data:`NONNEGATIVE`."""
    if not isinstance(ops, MaxTree):
        return ops
    producer = next((layer.activation for layer in reversed(layers) if layer.target == source), None)
    if producer is None:
        return ops
    if producer.name in NONNEGATIVE or producer.name.startswith("softplus"):
        return max_pool_ops(ops.shape, ops.axes, nonnegative=True)
    return ops


# pairwise max: units (coefficient of a, coefficient of b, weight in the sum); singles: (coefficient, weight)
_PAIR = ((1.0, -1.0, 0.5), (-1.0, 1.0, 0.5), (1.0, 1.0, 0.5), (-1.0, -1.0, -0.5))
_SINGLE = ((1.0, 1.0), (-1.0, -1.0))


def _level(rows: np.ndarray, nonnegative: bool
           ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """One tree level: the next index table, the units' (index a, coef a, index b, coef b), the sums."""
    pair_units, single_units = (_PAIR[:3], _SINGLE[:1]) if nonnegative else (_PAIR, _SINGLE)
    n, width = rows.shape
    half = (width + 1) // 2
    parts: list[list[np.ndarray]] = [[], [], [], []]
    sum_idx: list[np.ndarray] = []
    sum_coef: list[np.ndarray] = []
    nxt = np.full((n, half), -1, dtype=np.int64)
    units = slots = 0
    for j in range(half):
        a = rows[:, 2 * j]
        b = rows[:, 2 * j + 1] if 2 * j + 1 < width else np.full(n, -1, dtype=np.int64)
        pair, single = (a >= 0) & (b >= 0), (a >= 0) & (b < 0)
        for chosen, recipe in ((pair, pair_units), (single, single_units)):
            count = int(chosen.sum())
            ia, ib = a[chosen], (b[chosen] if chosen is pair else np.zeros(count, np.int64))
            idx, coef = np.zeros((count, len(_PAIR)), np.int64), np.zeros((count, len(_PAIR)))
            for u, unit in enumerate(recipe):
                ca, cb = (unit[0], unit[1]) if chosen is pair else (unit[0], 0.0)
                for part, value in zip(parts, (ia, np.full(count, ca), ib, np.full(count, cb))):
                    part.append(value)
                idx[:, u], coef[:, u] = units + np.arange(count), unit[-1]
                units += count
            sum_idx.append(idx)
            sum_coef.append(coef)
            nxt[np.flatnonzero(chosen), j] = slots + np.arange(count)
            slots += count
    a_idx, a_coef, b_idx, b_coef = (np.concatenate(p) for p in parts)
    return nxt, (a_idx, a_coef, b_idx, b_coef), (np.concatenate(sum_idx), np.concatenate(sum_coef))


def _gather(ia: np.ndarray, ca: np.ndarray, ib: np.ndarray, cb: np.ndarray, detail: str) -> AffineOp:
    """u_k = ca_k v[ia_k] + cb_k v[ib_k] on the flattened input."""
    tia, tib = torch.as_tensor(ia), torch.as_tensor(ib)
    tca, tcb = torch.as_tensor(ca, dtype=torch.float64), torch.as_tensor(cb, dtype=torch.float64)

    def fn(x: torch.Tensor, _bias: bool) -> torch.Tensor:
        v = x.reshape(1, -1)
        return v.index_select(1, tia) * tca.to(v.dtype) + v.index_select(1, tib) * tcb.to(v.dtype)
    return AffineOp(fn, 0, detail)


def _sum(idx: np.ndarray, coef: np.ndarray, detail: str) -> AffineOp:
    """v_s = sum_t coef_st u[idx_st]."""
    tidx, tcoef = torch.as_tensor(idx.reshape(-1)), torch.as_tensor(coef, dtype=torch.float64)
    rows, width = idx.shape

    def fn(u: torch.Tensor, _bias: bool) -> torch.Tensor:
        return (u.index_select(1, tidx).reshape(1, rows, width) * tcoef.to(u.dtype)).sum(-1)
    return AffineOp(fn, 0, detail)


# --------------------------------------------------------------------------- torch handlers
def _ints(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)] * n


def _torch_max_pool(shape: Sequence[int], n: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
                    ceil_mode: bool, return_indices: bool) -> list[Op]:
    """``F.max_pool{n}d`` over the last ``n`` axes of a tensor of ``shape``."""
    if return_indices:
        raise NotCovered("it returns the argmax indices, which are not continuous")
    k = _ints(kernel, n)
    s = _ints(stride if stride not in (None, [], ()) else kernel, n)
    p, d = _ints(padding, n), _ints(dilation, n)
    axes = [pooled_positions(size, ki, si, pi, pi, di, bool(ceil_mode))
            for size, ki, si, pi, di in zip(list(shape)[-n:], k, s, p, d)]
    return max_pool_ops(shape, axes)


def max_pool_module(m: Any, shape: tuple[int, ...]) -> list[Op]:
    """Handler of ``nn.MaxPool1d/2d/3d``."""
    return _torch_max_pool(shape, int(type(m).__name__[-2]), m.kernel_size, m.stride, m.padding, m.dilation,
                           m.ceil_mode, m.return_indices)


def adaptive_max_pool_module(m: Any, shape: tuple[int, ...]) -> list[Op]:
    """Handler of ``nn.AdaptiveMaxPool1d/2d/3d``."""
    if m.return_indices:
        raise NotCovered("it returns the argmax indices, which are not continuous")
    n = int(type(m).__name__[-2])
    sizes = m.output_size if isinstance(m.output_size, list | tuple) else [m.output_size] * n
    return max_pool_ops(shape, [adaptive_positions(size, size if o is None else int(o))
                                for size, o in zip(shape[-n:], sizes)])


def max_pool_function(call: Any) -> list[Op]:
    """Handler of ``F.max_pool1d/2d/3d`` (a :class:`.torch_ops.Call` with the input first)."""
    if not call.args or call.args[0] is not DYNAMIC:
        raise NotCovered("the pooled tensor is not its first argument")
    n = int(getattr(call.target, "__name__", "max_pool2d")[-2])
    return _torch_max_pool(call.shape, n, call.arg(1, "kernel_size"), call.arg(2, "stride"), call.arg(3, "padding", 0),
                           call.arg(4, "dilation", 1), call.arg(5, "ceil_mode", False),
                           call.arg(6, "return_indices", False))


__all__ = ["MaxTree", "NONNEGATIVE", "Positions", "adaptive_max_pool_module", "adaptive_positions", "for_input",
           "max_pool_function", "max_pool_module", "max_pool_ops", "pooled_positions"]
