"""L2-norm layers: poolings as :class:`~lipcert.norm_pool.NormPool` stages (decisions 43) and the merge of
orthogonium's L2NormResidual (decisions 44).

* torch: ``nn.LPPool2d`` (and ``F.lp_pool2d``) with ``norm_type`` 2, which computes sqrt(k_h k_w avg_pool2d(x^2)),
  and deel-torchlip's
  ``ScaledL2NormPool2d`` (an LPPool2d subclass whose forward multiplies by its ``k_coef_lip``): the pooling,
  then that factor as an affine layer.  A partial last window (``ceil_mode``) gets the weight k_h k_w / its
  size, as torch's average pooling divides by the window's size inside the input.
* ONNX: what ``torch.onnx.export`` writes for them, exactly Pow(x, 2) -> AveragePool (no padding) ->
  [Sign(a) * Relu(Abs(a))] -> Mul(c) -> Pow(0.5) or Sqrt, and the ``LpPool`` operator with p = 2.  A node
  sequence that starts as this pattern and then differs is refused with the node named (:func:`onnx_match`).
* the L2NormResidual merge sqrt(x^2 / 2 + fn(x)^2 / 2 + eps): from torch as one :func:`l2_norm_merge` call
  (:mod:`.torch_library`), from ONNX as its export Sqrt(Add(Add(Mul(Pow(x, 2), 0.5), Mul(Pow(y, 2), 0.5)), eps))
  (:func:`onnx_norm_merge`); both become a merge layer (:func:`norm_merge_layer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from lipcert.norm_pool import window_pool

from .graph import AffineOp, Layer, NotCovered, Op, PoolOp

_LIBRARY = ("deel.torchlip", "ScaledL2NormPool2d")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _coefficient(m: Any) -> float:
    """The factor after the pooling: deel-torchlip's k_coef_lip, 1 for torch's LPPool2d; NotCovered for
    another subclass that changes forward."""
    forward = type(m).forward
    if forward is nn.LPPool2d.forward:
        return 1.0
    for cls in type(m).__mro__:
        if cls.__module__.startswith(_LIBRARY[0] + ".") and cls.__name__ == _LIBRARY[1] and forward is getattr(cls, "forward", None):
            return float(m._coefficient_lip)
    raise NotCovered(f"{type(m).__name__} subclasses LPPool2d with its own forward, which lipcert does not know")


def lp_pool_module(m: Any, shape: tuple[int, ...]) -> list[Op]:
    """``nn.LPPool2d(2, ...)`` and deel-torchlip's ``ScaledL2NormPool2d`` on per-sample ``shape`` (..., H, W)."""
    if float(m.norm_type) != 2.0:
        raise NotCovered(f"LPPool2d with norm_type={m.norm_type}: only p = 2 (an L2-norm pooling, whose Lipschitz "
                         "constant lipcert knows exactly) is supported")
    coefficient = _coefficient(m)
    kernel = _pair(m.kernel_size)
    stride = kernel if m.stride is None else _pair(m.stride)
    ops: list[Op] = [pool_op(shape, kernel, stride, bool(m.ceil_mode), type(m).__name__)]
    if coefficient != 1.0:
        ops.append(AffineOp(lambda x, _b: coefficient * x, 0, f"x {coefficient:g}"))
    return ops


def lp_pool_function(call: Any) -> list[Op]:
    """``F.lp_pool2d(x, 2, kernel_size, stride=None, ceil_mode=False)`` (an fx leaf: the tracer autowraps it)."""
    norm = call.arg(1, "norm_type")
    if not call.dyn_first or not isinstance(norm, int | float) or float(norm) != 2.0:
        raise NotCovered(f"lp_pool2d with norm_type={norm!r}: only p = 2 applied to the input (an L2-norm pooling) "
                         "is supported")
    kernel = _pair(call.arg(2, "kernel_size"))
    stride = call.arg(3, "stride")
    return [pool_op(call.shape, kernel, kernel if stride is None else _pair(stride), bool(call.arg(4, "ceil_mode")),
                    "lp_pool2d")]


def pool_op(shape: Sequence[int], kernel: tuple[int, int], stride: tuple[int, int], ceil_mode: bool,
            name: str, scale: float | None = None) -> PoolOp:
    """The stage sqrt(s sum over each window of x^2) with torch's window geometry; s = k_h k_w / (the window's
    size inside the input) as torch's LPPool2d computes it, or ``scale`` on every window."""
    ones = torch.ones(1, math.prod(shape[:-2]), *shape[-2:], dtype=torch.float64)
    count = F.avg_pool2d(ones, kernel, stride, 0, ceil_mode, divisor_override=1)
    per_window = (math.prod(kernel) * F.avg_pool2d(ones, kernel, stride, 0, ceil_mode) / count if scale is None
                  else torch.full_like(count, scale))
    label = f"{name}(p=2, kernel {kernel}, stride {stride}{', ceil_mode' if ceil_mode else ''})"
    pool = window_pool(shape, kernel, stride, count.shape[-2:], per_window.reshape(-1), label)
    out_shape = (*shape[:-2], *count.shape[-2:])
    return PoolOp(pool, tuple(int(s) for s in out_shape), label)


def l2_norm_merge(x: torch.Tensor, out: torch.Tensor, eps: float) -> torch.Tensor:
    """orthogonium's L2NormResidual merge, sqrt(0.5 x^2 + 0.5 out^2 + eps), as one call for fx."""
    return torch.sqrt(0.5 * x**2 + 0.5 * out**2 + eps)


def norm_merge_layer(name: str, source: str, other: str, target: str, x: torch.Tensor, out: torch.Tensor,
                     eps: Any) -> tuple[Layer, torch.Tensor]:
    """The merge layer of an :func:`l2_norm_merge` call and its value on the probe (ValueError if the two
    branches differ in shape or eps is not a constant >= 0)."""
    if x.shape != out.shape:
        raise ValueError(f"its two branches have shapes {tuple(x.shape)} and {tuple(out.shape)}")
    if not isinstance(eps, int | float) or not eps >= 0:
        raise ValueError(f"its eps must be a constant >= 0, got {eps!r}")
    layer = Layer(name, "L2NormResidual", source, target, tuple(x.shape), tuple(x.shape),
                  detail=f"sqrt({source}^2 / 2 + {other}^2 / 2 + {float(eps):g})", other=other, merge_eps=float(eps))
    return layer, l2_norm_merge(x, out, float(eps))


# ---------------------------------------------------------------------------------------------- ONNX
@dataclass(frozen=True)
class OnnxMatch:
    """The nodes of one exported L2-norm pooling, from ``region[0]`` (reading the source) to ``exit``."""

    region: list[int]
    exit: str
    op: PoolOp


Users = Callable[[str], list[int]]


def _scalar(env: dict[str, Any], name: str) -> float | None:
    value = env.get(name)
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(-1)[0])
    return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _pool_geometry(node: onnx.NodeProto, shape: tuple[int, ...], label: str) -> tuple[tuple[int, int], tuple[int, int]]:
    kernel = [int(k) for k in _attr(node, "kernel_shape", [])]
    if len(kernel) != 2 or len(shape) != 4:
        raise NotCovered(f"{label}: only 2-D pooling of (N, C, H, W) tensors is supported, got kernel {kernel}")
    strides = [int(s) for s in _attr(node, "strides", [1, 1])]
    pads = [int(p) for p in _attr(node, "pads", [0, 0, 0, 0])]
    dilations = [int(d) for d in _attr(node, "dilations", [1, 1])]
    if any(pads) or any(d != 1 for d in dilations) or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotCovered(f"{label}: pads {pads}, dilations {dilations} or auto_pad: an L2-norm pooling without "
                         "padding and dilation is supported")
    if int(_attr(node, "ceil_mode", 0)) and any((n - k) % s for n, k, s in zip(shape[2:], kernel, strides)):
        raise NotCovered(f"{label}: ceil_mode=1 with a partial last window is not supported")
    return (kernel[0], kernel[1]), (strides[0], strides[1])


def onnx_lp_pool(node: onnx.NodeProto, shape: tuple[int, ...]) -> PoolOp | None:
    """The ``LpPool`` operator with p = 2 on (N, C, H, W): sqrt of the window's sum of squares; None for another
    p or rank (refused as every unsupported pooling is)."""
    if int(_attr(node, "p", 2)) != 2 or len(_attr(node, "kernel_shape", [])) != 2 or len(shape) != 4:
        return None
    kernel, stride = _pool_geometry(node, shape, "this L2-norm pooling")
    return pool_op(shape, kernel, stride, False, "LpPool", scale=1.0)


def onnx_match(nodes: list[onnx.NodeProto], env: dict[str, Any], users: Users, label: Callable[[int], str],
               start: int, shape: tuple[int, ...]) -> OnnxMatch | None:
    """The L2-norm pooling that node ``start`` (Pow(x, 2)) begins, or None when it is not followed by AveragePool.

    Raises NotCovered, naming the node where the export differs, when it is followed by AveragePool but not
    by exactly the rest of the pattern (module docstring).
    """
    square = nodes[start]
    if square.op_type != "Pow" or len(square.input) != 2 or _scalar(env, square.input[1]) != 2.0:
        return None
    nxt = users(square.output[0])
    if len(nxt) != 1 or nodes[nxt[0]].op_type != "AveragePool":
        return None
    region = [start, nxt[0]]
    avg = nodes[nxt[0]]
    kernel, stride = _pool_geometry(avg, shape, f"AveragePool node {label(nxt[0])!r} after Pow(x, 2)")
    tensor = avg.output[0]

    def refuse(j: int | None, why: str) -> NotCovered:
        where = "the pooled squares" if j is None else f"{nodes[j].op_type} node {label(j)!r}"
        return NotCovered(f"Pow(x, 2) -> AveragePool {label(nxt[0])!r} starts an L2-norm pooling, but {where} {why}; "
                          "lipcert accepts exactly Pow(x, 2) -> AveragePool -> [Sign(a) * Relu(Abs(a))] -> Mul(c) -> "
                          "Pow(0.5) or Sqrt (what torch.onnx.export writes for LPPool2d(2, ...))")

    after = users(tensor)
    kinds = sorted(nodes[j].op_type for j in after)
    if kinds == ["Abs", "Sign"]:  # sign(a) * relu(|a|) = a for the nonnegative pooled squares
        sign, absolute = sorted(after, key=lambda j: nodes[j].op_type, reverse=True)
        relu = users(nodes[absolute].output[0])
        if len(relu) != 1 or nodes[relu[0]].op_type != "Relu":
            raise refuse(absolute, "is not followed by Relu alone")
        mul = users(nodes[relu[0]].output[0])
        if (len(mul) != 1 or nodes[mul[0]].op_type != "Mul" or users(nodes[sign].output[0]) != mul
                or set(nodes[mul[0]].input) != {nodes[sign].output[0], nodes[relu[0]].output[0]}):
            raise refuse(relu[0], "does not multiply Sign(a) by Relu(Abs(a))")
        region += [sign, absolute, relu[0], mul[0]]
        tensor = nodes[mul[0]].output[0]
        after = users(tensor)
    if len(after) != 1 or nodes[after[0]].op_type != "Mul":
        raise refuse(after[0] if len(after) == 1 else None, "is not followed by a single Mul by a constant")
    scale_node = nodes[after[0]]
    other = [n for n in scale_node.input if n != tensor]
    factor = _scalar(env, other[0]) if len(other) == 1 else None
    if factor is None or not factor > 0:
        raise refuse(after[0], "does not multiply by a positive scalar constant")
    root = users(scale_node.output[0])
    if len(root) != 1 or not (nodes[root[0]].op_type == "Sqrt" or (
            nodes[root[0]].op_type == "Pow" and len(nodes[root[0]].input) == 2
            and _scalar(env, nodes[root[0]].input[1]) == 0.5 and nodes[root[0]].input[0] == scale_node.output[0])):
        raise refuse(after[0], "is not followed by Pow(0.5) or Sqrt alone")
    region += [after[0], root[0]]
    op = pool_op(shape, kernel, stride, False, "exported LPPool2d", scale=factor / math.prod(kernel))
    return OnnxMatch(region, nodes[root[0]].output[0], op)


@dataclass(frozen=True)
class OnnxMerge:
    """The nodes of one exported L2NormResidual merge sqrt(x^2 / 2 + y^2 / 2 + eps), its layer and probe value."""

    region: list[int]
    exit: str
    layer: Layer
    value: torch.Tensor


def _half_square(nodes: list[onnx.NodeProto], env: dict[str, Any], users: Users, j: int) -> int | None:
    """The Mul(Pow(t, 2), 0.5) that Pow node j begins (its index), or None."""
    node = nodes[j]
    if node.op_type != "Pow" or len(node.input) != 2 or _scalar(env, node.input[1]) != 2.0:
        return None
    nxt = users(node.output[0])
    if len(nxt) != 1 or nodes[nxt[0]].op_type != "Mul":
        return None
    mul = nodes[nxt[0]]
    other = [n for n in mul.input if n != node.output[0]]
    return nxt[0] if len(other) == 1 and _scalar(env, other[0]) == 0.5 else None


def onnx_norm_merge(nodes: list[onnx.NodeProto], env: dict[str, Any], users: Users, producer: Callable[[str], int | None],
                    start: int, label: Callable[[int], str]) -> OnnxMerge | None:
    """The exported L2NormResidual merge that Pow node ``start`` begins, or None when it is not one (or its two
    inputs, dynamic tensors in ``env`` with a ``probe``, are not both computed and of one shape)."""
    mul = _half_square(nodes, env, users, start)
    add = None if mul is None else users(nodes[mul].output[0])
    if mul is None or add is None or len(add) != 1 or nodes[add[0]].op_type != "Add":
        return None
    other = [n for n in nodes[add[0]].input if n != nodes[mul].output[0]]
    other_mul = producer(other[0]) if len(other) == 1 else None
    other_pow = None if other_mul is None else producer(nodes[other_mul].input[0])
    if other_mul is None or other_pow is None or other_pow == start or \
            _half_square(nodes, env, users, other_pow) != other_mul:
        return None
    shift = users(nodes[add[0]].output[0])
    if len(shift) != 1 or nodes[shift[0]].op_type != "Add":
        return None
    eps_name = [n for n in nodes[shift[0]].input if n != nodes[add[0]].output[0]]
    eps = _scalar(env, eps_name[0]) if len(eps_name) == 1 else None
    root = users(nodes[shift[0]].output[0])
    if eps is None or not eps >= 0 or len(root) != 1 or nodes[root[0]].op_type != "Sqrt":
        return None
    region = [start, mul, other_pow, other_mul, add[0], shift[0], root[0]]
    first, second = nodes[start].input[0], nodes[other_pow].input[0]
    probes = [getattr(env.get(name), "probe", None) for name in (first, second)]
    if probes[0] is None or probes[1] is None or probes[0].shape != probes[1].shape:
        return None
    exit_name = nodes[root[0]].output[0]
    layer, value = norm_merge_layer(f"l2residual({label(root[0])})", first, second, exit_name, probes[0], probes[1], eps)
    return OnnxMerge(region, exit_name, layer, value)
