"""ONNX operators as affine torch functions or elementwise activations (opsets 9 to 21).

Each handler receives one node whose single *dynamic* input (the one computed from the
model input) is known, every other input being a constant, and returns the operations it
amounts to: :class:`AffineOp` (``fn(x, with_bias)`` on one sample, float64) or
:class:`~lipcert.activations.Activation`.  A node that is neither raises :class:`NotCovered`
with the reason.  Handlers are written against the ONNX operator specification, one entry
per operator type in :data:`HANDLERS`; attributes that moved to inputs between opsets
(Squeeze axes, Clip bounds, Pad pads, Slice starts, ...) are read from either place.
:func:`identify` names the activation that a fused subgraph of :data:`ELEMENTWISE` operators computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lipcert.activations import Activation, elu, get_activation, hardtanh, leaky_relu, relu, softplus
from lipcert.operators import Conv2dOperator

from .graph import AffineOp, NotCovered, Op, undilate
from .maxpool import max_pool_ops, pooled_positions
from .modules import conv_module
from .onnx_node import OnnxNode, linear, required, t64, torch_pad
from .onnx_shape import (cast, concat, depth_to_space, dropout, expand, flatten, gather, identity, pad, reshape, slice_,
                         space_to_depth, squeeze, tile, transpose, unsqueeze)

FLOAT_LIMIT = 3.4e38  # |bound| at or above float32's largest value means "no bound" (old Clip defaults)


# --------------------------------------------------------------------------- products with constants
def gemm(node: OnnxNode) -> list[Op]:
    if node.dyn != 0:
        raise NotCovered("only Gemm whose first input A is the computed tensor is supported")
    b = node.const(1, "matrix B")
    c = node.const(2, "bias C")
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    if b is None:
        raise NotCovered("Gemm without matrix B")
    mat = t64(b.T if trans_b else b) * alpha
    shift = None if c is None or beta == 0 else t64(c) * beta

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        y = (x.T if trans_a else x) @ mat
        return y + shift if with_bias and shift is not None else y

    size = b.size + (0 if c is None else c.size)
    return [AffineOp(fn, size, f"{mat.shape[0]}->{mat.shape[1]}, alpha={alpha:g}, beta={beta:g}, "
                               f"transA={trans_a}, transB={trans_b}")]


def matmul(node: OnnxNode) -> list[Op]:
    other = node.const(1 - node.dyn, "other factor")
    if other is None:
        raise NotCovered("MatMul needs two inputs")
    w = t64(other)
    if node.dyn == 0:
        return [AffineOp(lambda x, _b: torch.matmul(x, w), other.size, f"x @ W, W {tuple(w.shape)}")]
    return [AffineOp(lambda x, _b: torch.matmul(w, x), other.size, f"W @ x, W {tuple(w.shape)}")]


def _other(node: OnnxNode) -> torch.Tensor:
    others = [node.const(i, "other operand") for i in range(len(node.inputs)) if i != node.dyn]
    if len(others) != 1 or others[0] is None:
        raise NotCovered(f"{node.proto.op_type} needs exactly two inputs")
    return t64(others[0])


def add(node: OnnxNode) -> list[Op]:
    c = _other(node)
    zero = torch.zeros_like(c)
    return [AffineOp(lambda x, b: x + (c if b else zero), c.numel(), f"+ constant {tuple(c.shape)}")]


def sub(node: OnnxNode) -> list[Op]:
    c = _other(node)
    zero = torch.zeros_like(c)
    if node.dyn == 0:
        return [AffineOp(lambda x, b: x - (c if b else zero), c.numel(), f"- constant {tuple(c.shape)}")]
    return [AffineOp(lambda x, b: (c if b else zero) - x, c.numel(), f"constant {tuple(c.shape)} - x")]


def mul(node: OnnxNode) -> list[Op]:
    c = _other(node)
    return [AffineOp(lambda x, _b: x * c, c.numel(), f"* constant {tuple(c.shape)}")]


def div(node: OnnxNode) -> list[Op]:
    if node.dyn != 0:
        raise NotCovered("it divides by a tensor computed from the input, which is not affine")
    c = _other(node)
    if (c == 0).any():
        raise NotCovered("it divides by a constant that contains zeros")
    return [AffineOp(lambda x, _b: x / c, c.numel(), f"/ constant {tuple(c.shape)}")]


def sum_(node: OnnxNode) -> list[Op]:
    consts = [c for c in (node.const(i, "operand") for i in range(len(node.inputs)) if i != node.dyn) if c is not None]
    total = t64(np.sum(np.broadcast_arrays(*consts), axis=0)) if consts else torch.zeros(())
    zero = torch.zeros_like(total)
    return [AffineOp(lambda x, b: x + (total if b else zero), total.numel(), "+ constants")]


def neg(node: OnnxNode) -> list[Op]:
    return [linear(lambda x: -x, "-x")]


def einsum(node: OnnxNode) -> list[Op]:
    eq = str(node.attr("equation"))
    consts = [None if i == node.dyn else t64(required(node, i)) for i in range(len(node.inputs))]

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum(eq, *[x if c is None else c for c in consts])

    return [AffineOp(lambda x, _b: fn(x), sum(c.numel() for c in consts if c is not None), eq)]


# --------------------------------------------------------------------------- convolutions and pooling
def _spatial(node: OnnxNode, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
             ) -> tuple[list[int], list[int]]:
    """Begin and end padding of each spatial axis (explicit pads or auto_pad)."""
    n = len(kernel)
    auto = str(node.attr("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(node.shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begins.append(small if auto == "SAME_UPPER" else total - small)
            ends.append(total - small if auto == "SAME_UPPER" else small)
        return begins, ends
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = node.attr("pads") or [0] * (2 * n)
    return list(pads[:n]), list(pads[n:])


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_attributes(node: OnnxNode, op: str, what: str
                     ) -> tuple[np.ndarray, np.ndarray | None, int, list[int], list[int], list[int], int]:
    """Constant weights and bias, spatial rank n, kernel, strides, dilations and groups of a (transposed) Conv."""
    if node.dyn != 0:
        raise NotCovered("its weights are computed from the input")
    w_arr = node.const(1, "weights")
    if w_arr is None:
        raise NotCovered(f"{op} without weights")
    n = w_arr.ndim - 2
    if n not in _CONV:
        raise NotCovered(f"{n}-D {what} are not supported")
    kernel = list(node.attr("kernel_shape") or w_arr.shape[2:])
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    return w_arr, node.const(2, "bias"), n, kernel, strides, dilations, int(node.attr("group", 1))


def conv(node: OnnxNode) -> list[Op]:
    w_arr, b_arr, n, kernel, strides, dilations, groups = _conv_attributes(node, "Conv", "convolutions")
    begins, ends = _spatial(node, kernel, strides, dilations)
    pad = torch_pad(begins, ends)
    weight = undilate(t64(w_arr), dilations)
    bias = None if b_arr is None else t64(b_arr).reshape(-1, *([1] * n))
    op = _CONV[n]

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        y = op(F.pad(x, pad), weight, None, strides, 0, 1, groups)
        return y + bias if with_bias and bias is not None else y

    detail = (f"{w_arr.shape[1] * groups}->{w_arr.shape[0]} channels, kernel {kernel}, stride {strides}, "
              f"pads {begins + ends}, dilation {dilations}, groups {groups}")
    operator = None
    if n == 2 and len(node.shape) == 4 and node.shape[0] == 1 and min(begins + ends) >= 0:
        operator = Conv2dOperator.conv(t64(w_arr), node.shape[1:], stride=tuple(strides), dilation=tuple(dilations),
                                       groups=groups, padding=(begins[0], ends[0], begins[1], ends[1]))
    return [AffineOp(fn, w_arr.size + (0 if b_arr is None else b_arr.size), detail,
                     module=conv_module(weight, bias, strides, pad, groups), operator=operator)]


def conv_transpose(node: OnnxNode) -> list[Op]:
    w_arr, b_arr, n, kernel, strides, dilations, groups = _conv_attributes(node, "ConvTranspose", "transposed convolutions")
    out_pad = list(node.attr("output_padding") or [0] * n)
    auto = str(node.attr("auto_pad", "NOTSET"))
    output_shape = node.attr("output_shape")
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for i, s, op, k, d in zip(node.shape[2:], strides, out_pad, kernel, dilations)]
    if output_shape is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [i * s for i, s in zip(node.shape[2:], strides)]
    if output_shape is not None:
        totals = [f - int(o) for f, o in zip(full, list(output_shape)[-n:])]
        upper = auto == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        ends = [t - t // 2 if upper else t // 2 for t in totals]
    elif auto == "VALID" or node.attr("pads") is None:
        begins, ends = [0] * n, [0] * n
    else:
        pads = list(node.attr("pads"))
        begins, ends = pads[:n], pads[n:]
    # conv_transpose without padding, then output_padding zeros at the end, then crop the pads
    crop = torch_pad([-b for b in begins], [op - e for op, e in zip(out_pad, ends)])
    weight = undilate(t64(w_arr), dilations)
    bias = None if b_arr is None else t64(b_arr).reshape(-1, *([1] * n))
    op_t = _CONV_T[n]

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        y = F.pad(op_t(x, weight, None, strides, 0, 0, groups, 1), crop)
        return y + bias if with_bias and bias is not None else y

    detail = (f"{w_arr.shape[0]}->{w_arr.shape[1] * groups} channels, kernel {kernel}, stride {strides}, "
              f"pads {list(begins) + list(ends)}, output_padding {out_pad}, dilation {dilations}, groups {groups}")
    return [AffineOp(fn, w_arr.size + (0 if b_arr is None else b_arr.size), detail)]


def batch_norm(node: OnnxNode) -> list[Op]:
    if int(node.attr("training_mode", 0)):
        raise NotCovered("training_mode=1 normalizes with batch statistics, which is not affine")
    scale, shift, mean, var = (node.const(i, what) for i, what in
                               ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    if scale is None or shift is None or mean is None or var is None:
        raise NotCovered("BatchNormalization needs scale, bias, mean and variance")
    eps = float(node.attr("epsilon", 1e-5))
    view = (-1,) + (1,) * (len(node.shape) - 2)
    factor = (t64(scale) / torch.sqrt(t64(var) + eps)).reshape(view)
    offset = (t64(shift) - t64(mean) * (t64(scale) / torch.sqrt(t64(var) + eps))).reshape(view)

    def fn(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        return x * factor + offset if with_bias else x * factor

    return [AffineOp(fn, 4 * scale.size, f"{scale.size} channels, epsilon={eps:g}")]


def average_pool(node: OnnxNode) -> list[Op]:
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    if n not in _CONV:
        raise NotCovered(f"{n}-D pooling is not supported")
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    begins, ends = _spatial(node, kernel, strides, dilations)
    if int(node.attr("ceil_mode", 0)):
        for size, b, e, k, s, d in zip(node.shape[2:], begins, ends, kernel, strides, dilations):
            span = size + b + e - (k - 1) * d - 1
            if span % s:
                raise NotCovered("ceil_mode=1 with a partial last window is not implemented")
    channels = node.shape[1]
    ones = undilate(torch.ones(channels, 1, *kernel, dtype=torch.float64), dilations)
    pad, op = torch_pad(begins, ends), _CONV[n]

    def window_sum(x: torch.Tensor) -> torch.Tensor:
        return op(F.pad(x, pad), ones, None, strides, 0, 1, channels)

    if int(node.attr("count_include_pad", 0)) or not any(begins + ends):
        divisor = torch.tensor(float(math.prod(kernel)), dtype=torch.float64)
    else:
        divisor = window_sum(torch.ones(node.shape, dtype=torch.float64))
    detail = f"kernel {kernel}, stride {strides}, pads {begins + ends}"
    return [linear(lambda x: window_sum(x) / divisor, detail)]


def max_pool(node: OnnxNode) -> list[Op]:
    """MaxPool as the exact max tree of :mod:`.maxpool`."""
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    begins, ends = _spatial(node, kernel, strides, dilations)
    ceil = bool(int(node.attr("ceil_mode", 0)))
    axes = [pooled_positions(size, k, s, b, e, d, ceil)
            for size, k, s, b, e, d in zip(node.shape[2:], kernel, strides, begins, ends, dilations)]
    return max_pool_ops(node.shape, axes)


def global_max_pool(node: OnnxNode) -> list[Op]:
    return max_pool_ops(node.shape, [[list(range(size))] for size in node.shape[2:]])


def global_average_pool(node: OnnxNode) -> list[Op]:
    dims = tuple(range(2, len(node.shape)))
    return [linear(lambda x: x.mean(dim=dims, keepdim=True), "mean over spatial axes")]


def _reduce(node: OnnxNode, mean: bool) -> list[Op]:
    axes = node.ints("axes", 1, "axes")
    keep = bool(node.attr("keepdims", 1))
    rank = len(node.shape)
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            return []
        axes = list(range(rank))
    dims = tuple(sorted(a % rank for a in axes))

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=dims, keepdim=keep) if mean else x.sum(dim=dims, keepdim=keep)

    return [linear(fn, f"axes {list(dims)}, keepdims={int(keep)}")]


# --------------------------------------------------------------------------- activations
def _clip_bound(node: OnnxNode, attr: str, index: int) -> float | None:
    if node.opset < 11:
        value = node.attr(attr)
    else:
        arr = node.const(index, attr)
        value = None if arr is None or arr.size == 0 else arr.reshape(-1)[0]
    if value is None or abs(float(value)) >= FLOAT_LIMIT:
        return None
    return float(value)


def clip(node: OnnxNode) -> list[Op]:
    lo, hi = _clip_bound(node, "min", 1), _clip_bound(node, "max", 2)
    if lo is None and hi is None:
        return []
    if lo is not None and hi is not None and lo > hi:
        raise NotCovered(f"min {lo:g} > max {hi:g}")
    if lo == 0.0 and hi == 6.0:
        return [get_activation("relu6")]
    if lo == 0.0 and hi is None:
        return [relu()]
    return [hardtanh(-math.inf if lo is None else lo, math.inf if hi is None else hi)]


def prelu(node: OnnxNode) -> list[Op]:
    slope = node.const(1, "slope")
    if slope is None or slope.size == 0 or not np.all(slope == slope.reshape(-1)[0]):
        raise NotCovered("PRelu with different slopes per channel is not supported (one shared slope is)")
    return [leaky_relu(float(slope.reshape(-1)[0]))]


def hard_sigmoid(node: OnnxNode) -> list[Op]:
    a, b = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return [AffineOp(lambda x, bias: a * x + b if bias else a * x, 0, f"{a:g} x + {b:g}"), hardtanh(0.0, 1.0)]


def selu(node: OnnxNode) -> list[Op]:
    a, g = float(node.attr("alpha", 1.67326319217681884765625)), float(node.attr("gamma", 1.05070102214813232421875))
    return [elu(a), AffineOp(lambda x, _b: g * x, 0, f"* {g:g}")]


def gelu(node: OnnxNode) -> list[Op]:
    approx = str(node.attr("approximate", "none"))
    return [get_activation("gelu_tanh" if approx == "tanh" else "gelu")]


def _act(factory: Callable[[OnnxNode], Activation]) -> Callable[[OnnxNode], list[Op]]:
    return lambda node: [factory(node)]


HANDLERS: dict[str, Callable[[OnnxNode], list[Op]]] = {
    "Gemm": gemm, "MatMul": matmul, "Add": add, "Sub": sub, "Mul": mul, "Div": div, "Sum": sum_, "Neg": neg,
    "Einsum": einsum, "Conv": conv, "ConvTranspose": conv_transpose, "BatchNormalization": batch_norm,
    "AveragePool": average_pool, "GlobalAveragePool": global_average_pool, "MaxPool": max_pool,
    "GlobalMaxPool": global_max_pool,
    "ReduceMean": lambda n: _reduce(n, True), "ReduceSum": lambda n: _reduce(n, False),
    "Flatten": flatten, "Reshape": reshape, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Transpose": transpose,
    "Identity": identity, "Dropout": dropout, "Cast": cast, "Pad": pad, "Slice": slice_, "Gather": gather,
    "Concat": concat, "Expand": expand, "Tile": tile, "DepthToSpace": depth_to_space, "SpaceToDepth": space_to_depth,
    "Relu": _act(lambda n: relu()), "LeakyRelu": _act(lambda n: leaky_relu(float(n.attr("alpha", 0.01)))),
    "Elu": _act(lambda n: elu(float(n.attr("alpha", 1.0)))), "Softplus": _act(lambda n: softplus()),
    "Sigmoid": _act(lambda n: get_activation("sigmoid")), "Tanh": _act(lambda n: get_activation("tanh")),
    "Clip": clip, "PRelu": prelu, "HardSigmoid": hard_sigmoid, "Selu": selu, "Gelu": gelu,
}

_POOL_WHY = ("this pooling (a p-norm or random windows) is neither affine nor elementwise; max, adaptive max and "
             "average pooling are supported")
_NORM_WHY = "it normalizes by statistics of the input itself, which is not affine"
WHY: dict[str, str] = {
    "MaxRoiPool": _POOL_WHY, "LpPool": _POOL_WHY,
    "GlobalLpPool": _POOL_WHY,
    "Softmax": "softmax couples all entries of a vector; certify the logits instead (remove a final softmax, it "
               "does not change the predicted class)",
    "LogSoftmax": "log-softmax couples all entries of a vector; certify the logits instead (remove a final "
                  "log-softmax, it does not change the predicted class)",
    "LayerNormalization": _NORM_WHY, "InstanceNormalization": _NORM_WHY, "GroupNormalization": _NORM_WHY,
    "LpNormalization": _NORM_WHY, "LRN": _NORM_WHY, "MeanVarianceNormalization": _NORM_WHY,
    "If": "control flow (If/Loop/Scan) is not a fixed chain of layers", "Loop": "control flow is not supported",
    "Scan": "control flow is not supported",
    "Resize": "resizing is not supported (not implemented)",
    "Upsample": "upsampling is not supported (not implemented)",
    "Split": "Split produces several branches; only chains are supported",
    "Attention": "attention multiplies computed tensors, which is not affine",
    "ArgMax": "arg-max is not continuous", "TopK": "top-k selection is not affine",
}


def why_not(op_type: str) -> str:
    """Why an operator type with no handler is not covered."""
    return WHY.get(op_type, f"{op_type} is not an affine map or an elementwise slope-restricted activation "
                            "known to lipcert")


MERGE_WHY: dict[str, str] = {
    "Add": "it adds two tensors computed from the input (a residual connection or a merge of branches); lipcert "
           "bounds chains of layers only",
    "Sum": "it adds several tensors computed from the input (a merge of branches); lipcert bounds chains only",
    "Sub": "it subtracts two tensors computed from the input (a merge of branches); lipcert bounds chains only",
    "Concat": "it concatenates more than two tensors computed from the input (a fork into three or more branches) "
                  "or a branch with itself; lipcert joins exactly two branches of one fork per concatenation",
    "Mul": "it multiplies two tensors computed from the input (gating or attention), which is not affine",
    "MatMul": "it multiplies two tensors computed from the input (attention), which is not affine",
    "Div": "it divides two tensors computed from the input, which is not affine",
}


def merge_why(op_type: str) -> str:
    """Why a node with several computed inputs is not covered."""
    return MERGE_WHY.get(op_type, "it combines several tensors computed from the input (branches), so the model is "
                                  "not a chain of layers")


ELEMENTWISE: dict[str, Callable[..., torch.Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Erf": torch.erf, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg, "Exp": torch.exp,
    "Sqrt": torch.sqrt, "Relu": torch.relu, "Softplus": F.softplus, "Identity": lambda x: x,
}
"""Scalar operators allowed inside a fused elementwise activation (SiLU, GELU written out)."""

_FUSION_CANDIDATES = ("relu", "sigmoid", "tanh", "softplus", "elu", "silu", "gelu", "gelu_tanh")
"""Activations that :func:`identify` tries, in this order, for a fused elementwise subgraph."""


def identify(z: torch.Tensor, g: torch.Tensor) -> tuple[Activation | None, float, float] | None:
    """(phi, a, d) with g = a * phi(z) + d on the grid (phi None: g is affine), or None."""
    if not torch.isfinite(g).all():
        return None
    tol = 1e-6 * (1.0 + g.abs())
    candidates: list[tuple[Activation | None, torch.Tensor]] = [(None, z)]
    candidates += [(act, act(z)) for act in (get_activation(n) for n in _FUSION_CANDIDATES)]
    for act, phi in candidates:
        basis = torch.stack([phi, torch.ones_like(z)], dim=1)
        coef = torch.linalg.lstsq(basis, g[:, None]).solution[:, 0]
        a, d = _tidy(float(coef[0])), _tidy(float(coef[1]))
        if a != 0.0 and bool(((a * phi + d - g).abs() <= tol).all()):
            return act, a, d
    return None


def _tidy(v: float) -> float:
    """A fitted coefficient rounded to 6 decimals when that changes it by less than 1e-7 (fit noise).

    The rounded fit is what :func:`identify` then checks against the subgraph.
    """
    r = round(v, 6)
    return r if abs(r - v) <= 1e-7 * max(1.0, abs(v)) else v
