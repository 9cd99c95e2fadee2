"""torch modules and functions as affine maps or elementwise activations.

Handlers receive a :class:`Call`: one fx node whose only input computed from the model
input is marked :data:`DYNAMIC` in its arguments, every other argument a constant.  They
return affine operations (``fn(x, with_bias)`` on one sample, float64) and activations, or
raise :class:`~.onnx_ops.NotCovered` with the reason.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipcert.activations import Activation, elu, get_activation, hardtanh, leaky_relu, relu, softplus
from lipcert.operators import Conv2dOperator

from . import groupsort
from .graph import DYNAMIC, AffineOp, NotCovered, Op, undilate
from .l2pool import lp_pool_function, lp_pool_module
from .maxpool import adaptive_max_pool_module, max_pool_function, max_pool_module
from .modules import torch_copy

SOFTPLUS_MIN_THRESHOLD = 20.0


@dataclass(frozen=True)
class Call:
    """One fx node with its dynamic argument marked."""

    name: str
    target: Any  # the function, the method name, or the module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, ...]  # per-sample shape of the dynamic argument

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)

    @property
    def dyn_first(self) -> bool:
        return len(self.args) > 0 and self.args[0] is DYNAMIC


def f64(value: Any) -> Any:
    """Floating tensors (also inside lists) as float64 CPU tensors; everything else unchanged."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return t.to(torch.float64) if t.is_floating_point() else t
    if isinstance(value, list | tuple):
        return type(value)(f64(v) for v in value)
    return value


def substitute(value: Any, x: torch.Tensor) -> Any:
    """``value`` with the DYNAMIC marker replaced by ``x`` (recursively in lists and tuples)."""
    if value is DYNAMIC:
        return x
    if isinstance(value, list | tuple):
        return type(value)(substitute(v, x) for v in value)
    if isinstance(value, dict):
        return {k: substitute(v, x) for k, v in value.items()}
    return value


def _require_first(call: Call) -> None:
    if not call.dyn_first:
        raise NotCovered("the tensor computed from the input is not its first argument, so it is not a linear "
                         "map of it (for example an index or a weight computed from the input)")


def generic_linear(call: Call, method: bool) -> list[Op]:
    """A function linear in its first argument, called as written with float64 constants."""
    _require_first(call)
    rest, kwargs = f64(call.args[1:]), f64(call.kwargs)
    if method:
        name = str(call.target)
        return [AffineOp(lambda x, _b: getattr(x, name)(*substitute(rest, x), **kwargs), 0, name)]
    fn = call.target
    return [AffineOp(lambda x, _b: fn(x, *rest, **kwargs), 0, getattr(fn, "__name__", str(fn)))]


def _other(call: Call) -> tuple[torch.Tensor | float, bool]:
    """The constant operand of a binary operator and whether the dynamic one comes first."""
    if len(call.args) < 2:
        raise NotCovered("expected two operands")
    first = call.args[0] is DYNAMIC
    other = call.args[1] if first else call.args[0]
    if isinstance(other, torch.Tensor):
        return f64(other), first
    if isinstance(other, int | float) and not isinstance(other, bool):
        return float(other), first
    raise NotCovered(f"unsupported operand {type(other).__name__}")


def add(call: Call) -> list[Op]:
    c, _ = _other(call)
    alpha = call.kwargs.get("alpha", 1)
    if alpha != 1:
        raise NotCovered("torch.add with alpha is not supported")
    zero = c * 0.0
    return [AffineOp(lambda x, b: x + (c if b else zero), 0, "+ constant")]


def sub(call: Call, reverse: bool = False) -> list[Op]:
    c, first = _other(call)
    if call.kwargs.get("alpha", 1) != 1:
        raise NotCovered("torch.sub with alpha is not supported")
    zero = c * 0.0
    if first != reverse:
        return [AffineOp(lambda x, b: x - (c if b else zero), 0, "- constant")]
    return [AffineOp(lambda x, b: (c if b else zero) - x, 0, "constant - x")]


def mul(call: Call) -> list[Op]:
    c, _ = _other(call)
    return [AffineOp(lambda x, _b: x * c, 0, "* constant")]


def div(call: Call) -> list[Op]:
    c, first = _other(call)
    if not first:
        raise NotCovered("it divides by a tensor computed from the input, which is not affine")
    if call.kwargs.get("rounding_mode") is not None:
        raise NotCovered("division with rounding is not affine")
    if (torch.as_tensor(c) == 0).any():
        raise NotCovered("it divides by a constant that contains zeros")
    return [AffineOp(lambda x, _b: x / c, 0, "/ constant")]


def matmul(call: Call) -> list[Op]:
    c, first = _other(call)
    if not isinstance(c, torch.Tensor):
        raise NotCovered("matrix product with a number")
    if first:
        return [AffineOp(lambda x, _b: torch.matmul(x, c), 0, "x @ W")]
    return [AffineOp(lambda x, _b: torch.matmul(c, x), 0, "W @ x")]


def linear_fn(call: Call) -> list[Op]:
    _require_first(call)
    w, b = f64(call.arg(1, "weight")), f64(call.arg(2, "bias"))
    return [_linear_op(w, b)]


def _linear_op(w: torch.Tensor, b: torch.Tensor | None) -> AffineOp:
    return AffineOp(lambda x, bias: F.linear(x, w, b if bias else None),
                    w.numel() + (0 if b is None else b.numel()), f"{w.shape[1]}->{w.shape[0]}")


_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_T = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}


def conv_fn(call: Call) -> list[Op]:
    _require_first(call)
    w, b = f64(call.arg(1, "weight")), f64(call.arg(2, "bias"))
    stride, padding = call.arg(3, "stride", 1), call.arg(4, "padding", 0)
    dilation, groups = call.arg(5, "dilation", 1), call.arg(6, "groups", 1)
    op, wd = call.target, undilate(w, dilation)
    return [AffineOp(lambda x, bias: op(x, wd, b if bias else None, stride, padding, 1, groups),
                     w.numel() + (0 if b is None else b.numel()), _conv_detail(w, stride, padding, dilation, groups))]


def conv_transpose_fn(call: Call) -> list[Op]:
    _require_first(call)
    w, b = f64(call.arg(1, "weight")), f64(call.arg(2, "bias"))
    stride, padding = call.arg(3, "stride", 1), call.arg(4, "padding", 0)
    out_pad, groups, dilation = call.arg(5, "output_padding", 0), call.arg(6, "groups", 1), call.arg(7, "dilation", 1)
    op, wd = call.target, undilate(w, dilation)
    return [AffineOp(lambda x, bias: op(x, wd, b if bias else None, stride, padding, out_pad, groups, 1),
                     w.numel() + (0 if b is None else b.numel()),
                     _conv_detail(w, stride, padding, dilation, groups) + f", output_padding {out_pad}")]


def _conv_detail(w: torch.Tensor, stride: Any, padding: Any, dilation: Any, groups: Any) -> str:
    return (f"kernel {list(w.shape[2:])}, stride {stride}, padding {padding}, dilation {dilation}, "
            f"groups {groups}")


def batch_norm_op(shape: tuple[int, ...], mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                  bias: torch.Tensor | None, eps: float) -> AffineOp:
    """Eval-mode batch normalization over axis 1 as x * factor + offset."""
    inv = 1.0 / torch.sqrt(f64(var) + eps)
    scale = inv if weight is None else f64(weight) * inv
    shift = -f64(mean) * scale + (0.0 if bias is None else f64(bias))
    view = (-1,) + (1,) * (len(shape) - 2)
    factor, offset = scale.reshape(view), shift.reshape(view)
    return AffineOp(lambda x, b: x * factor + offset if b else x * factor, 4 * mean.numel(),
                    f"{mean.numel()} channels, eps={eps:g}")


def batch_norm_fn(call: Call) -> list[Op]:
    _require_first(call)
    if call.arg(5, "training", False):
        raise NotCovered("training=True normalizes with batch statistics, which is not affine; call model.eval()")
    mean, var = call.arg(1, "running_mean"), call.arg(2, "running_var")
    if mean is None or var is None:
        raise NotCovered("batch normalization without running statistics uses batch statistics")
    return [batch_norm_op(call.shape, mean, var, call.arg(3, "weight"), call.arg(4, "bias"), call.arg(7, "eps", 1e-5))]


def pad_fn(call: Call) -> list[Op]:
    _require_first(call)
    pads, mode, value = call.arg(1, "pad"), call.arg(2, "mode", "constant"), call.arg(3, "value", None)
    if mode == "constant":
        v = 0.0 if value is None else float(value)
        return [AffineOp(lambda x, b: F.pad(x, pads, value=v if b else 0.0), 0, f"pads {list(pads)}, value {v:g}")]
    return [AffineOp(lambda x, _b: F.pad(x, pads, mode=mode), 0, f"{mode} pads {list(pads)}")]


def cat_fn(call: Call) -> list[Op]:
    parts = call.arg(0, "tensors")
    dim = call.arg(1, "dim", 0)
    if not isinstance(parts, list | tuple) or sum(p is DYNAMIC for p in parts) != 1:
        raise NotCovered("it concatenates tensors from several branches; lipcert bounds chains of layers only")
    consts = [f64(p) for p in parts]
    zeros = [p if p is DYNAMIC else torch.zeros_like(p) for p in consts]
    return [AffineOp(lambda x, b: torch.cat(substitute(consts if b else zeros, x), dim=dim), 0,
                     f"dim {dim}, with constants")]


def dropout_fn(call: Call) -> list[Op]:
    _require_first(call)
    if call.arg(2, "training", True) and call.arg(1, "p", 0.5) > 0:
        raise NotCovered("dropout in training mode drops random entries; call model.eval()")
    return []


def cast_method(call: Call) -> list[Op]:
    _require_first(call)
    name = str(call.target)
    if name in ("half", "bfloat16"):
        raise NotCovered(f"{name}() rounds the values to low precision")
    if name in ("int", "long", "bool", "short", "byte", "char"):
        raise NotCovered(f"{name}() rounds the values")
    for a in list(call.args[1:]) + list(call.kwargs.values()):
        if isinstance(a, torch.dtype) and a not in (torch.float32, torch.float64):
            raise NotCovered(f"a cast to {a} rounds the values")
    return []


def clamp(call: Call) -> list[Op]:
    _require_first(call)
    lo, hi = call.arg(1, "min"), call.arg(2, "max")
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        raise NotCovered("clamp with tensor bounds is not supported")
    return [_clamp_activation(lo, hi)]


def _clamp_activation(lo: float | None, hi: float | None) -> Activation:
    if lo == 0 and hi == 6:
        return get_activation("relu6")
    if lo == 0 and hi is None:
        return relu()
    return hardtanh(-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def _softplus(beta: float, threshold: float) -> Activation:
    if threshold < SOFTPLUS_MIN_THRESHOLD:
        raise NotCovered(f"softplus with threshold={threshold:g} switches to the identity with a jump of "
                         f"{math.log1p(math.exp(-threshold)) / beta:.2g}, so it is not continuous; use the default "
                         "threshold 20")
    return softplus(float(beta))


def _act(make: Callable[[Call], Activation]) -> Callable[[Call], list[Op]]:
    def handler(call: Call) -> list[Op]:
        _require_first(call)
        return [make(call)]
    return handler


def _fixed(ops: list[Op]) -> Callable[[Call], list[Op]]:
    def handler(call: Call) -> list[Op]:
        _require_first(call)
        return list(ops)
    return handler


HARDSIGMOID: list[Op] = [AffineOp(lambda x, b: x / 6.0 + 0.5 if b else x / 6.0, 0, "x / 6 + 1/2"), hardtanh(0.0, 1.0)]
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
SELU: list[Op] = [elu(SELU_ALPHA), AffineOp(lambda x, _b: SELU_SCALE * x, 0, "* 1.0507")]

_ACTIVATION_FUNCTIONS: dict[Any, Callable[[Call], list[Op]]] = {
    F.relu: _act(lambda c: relu()), torch.relu: _act(lambda c: relu()),
    F.relu6: _act(lambda c: get_activation("relu6")),
    F.leaky_relu: _act(lambda c: leaky_relu(float(c.arg(1, "negative_slope", 0.01)))),
    F.elu: _act(lambda c: elu(float(c.arg(1, "alpha", 1.0)))),
    F.softplus: _act(lambda c: _softplus(float(c.arg(1, "beta", 1.0)), float(c.arg(2, "threshold", 20.0)))),
    torch.sigmoid: _act(lambda c: get_activation("sigmoid")), F.sigmoid: _act(lambda c: get_activation("sigmoid")),
    torch.tanh: _act(lambda c: get_activation("tanh")), F.tanh: _act(lambda c: get_activation("tanh")),
    F.silu: _act(lambda c: get_activation("silu")),
    F.gelu: _act(lambda c: get_activation("gelu_tanh" if c.arg(1, "approximate", "none") == "tanh" else "gelu")),
    F.hardtanh: _act(lambda c: hardtanh(float(c.arg(1, "min_val", -1.0)), float(c.arg(2, "max_val", 1.0)))),
    F.hardsigmoid: _fixed(HARDSIGMOID), F.selu: _fixed(SELU),
    torch.clamp: clamp, torch.clip: clamp,
}

LINEAR_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.t,
    torch.narrow, torch.flip, torch.roll, torch.movedim, torch.swapaxes, torch.mean, torch.sum,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.pixel_shuffle, F.pixel_unshuffle, F.interpolate, operator.getitem, operator.neg, torch.neg,
}

FUNCTIONS: dict[Any, Callable[[Call], list[Op]]] = {
    **_ACTIVATION_FUNCTIONS,
    operator.add: add, torch.add: add, operator.sub: sub, torch.sub: sub, torch.rsub: lambda c: sub(c, True),
    operator.mul: mul, torch.mul: mul, operator.truediv: div, torch.div: div, torch.true_divide: div,
    operator.iadd: add, operator.isub: sub, operator.imul: mul, operator.itruediv: div,
    operator.matmul: matmul, torch.matmul: matmul, torch.mm: matmul,
    F.linear: linear_fn, **{f: conv_fn for f in _CONV}, **{f: conv_transpose_fn for f in _CONV_T},
    F.max_pool1d: max_pool_function, F.max_pool2d: max_pool_function, F.max_pool3d: max_pool_function,
    F.batch_norm: batch_norm_fn, F.pad: pad_fn, torch.cat: cat_fn, torch.concat: cat_fn,
    F.dropout: dropout_fn, F.dropout1d: dropout_fn, F.dropout2d: dropout_fn, F.dropout3d: dropout_fn,
    F.alpha_dropout: dropout_fn, F.lp_pool2d: lp_pool_function,
    **{f: (lambda c: generic_linear(c, False)) for f in LINEAR_FUNCTIONS},
}

LINEAR_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "mean", "sum",
                  "flip", "expand", "repeat", "narrow", "movedim", "swapaxes", "view_as", "reshape_as", "expand_as",
                  "__getitem__", "neg", "__neg__"}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}

METHODS: dict[str, Callable[[Call], list[Op]]] = {
    "add": add, "__add__": add, "__radd__": add, "sub": sub, "__sub__": sub, "__rsub__": lambda c: sub(c, True),
    "mul": mul, "__mul__": mul, "__rmul__": mul, "div": div, "__truediv__": div, "true_divide": div,
    "matmul": matmul, "mm": matmul, "__matmul__": matmul,
    "relu": _act(lambda c: relu()), "sigmoid": _act(lambda c: get_activation("sigmoid")),
    "tanh": _act(lambda c: get_activation("tanh")), "clamp": clamp, "clip": clamp,
    **{m: cast_method for m in ("float", "double", "to", "type", "type_as", "half", "bfloat16", "int", "long",
                                "bool", "short", "byte", "char")},
    **{m: _fixed([]) for m in IDENTITY_METHODS},
    **{m: (lambda c: generic_linear(c, True)) for m in LINEAR_METHODS},
}


# --------------------------------------------------------------------------- modules
def _module_linear(m: Any, shape: tuple[int, ...]) -> list[Op]:
    return [AffineOp(lambda x, _b: m(x), 0, _extra(m))]


def _extra(m: Any) -> str:
    return str(m.extra_repr())


def _dropout(m: Any, shape: tuple[int, ...]) -> list[Op]:
    if m.training and getattr(m, "p", 0) > 0:
        raise NotCovered("dropout in training mode drops random entries; call model.eval()")
    return []


def _conv(m: Any, shape: tuple[int, ...]) -> list[Op]:
    w = f64(m.weight)
    b = None if m.bias is None else f64(m.bias)
    wd = undilate(w, m.dilation)
    op = (F.conv1d, F.conv2d, F.conv3d)[w.ndim - 3]
    if m.padding_mode != "zeros":
        pads, mode = m._reversed_padding_repeated_twice, m.padding_mode

        def fn(x: torch.Tensor, bias: bool) -> torch.Tensor:
            return op(F.pad(x, pads, mode=mode), wd, b if bias else None, m.stride, 0, 1, m.groups)
    else:
        def fn(x: torch.Tensor, bias: bool) -> torch.Tensor:
            return op(x, wd, b if bias else None, m.stride, m.padding, 1, m.groups)
    module = torch_copy(m) if m.padding_mode == "zeros" and m.groups == 1 else None  # grouped: dense (see conv_module)
    return [AffineOp(fn, w.numel() + (0 if b is None else b.numel()), _extra(m), module=module,
                     operator=_conv_operator(m, w, shape, adjoint=False))]


def _conv_operator(m: Any, w: torch.Tensor, shape: tuple[int, ...], adjoint: bool) -> Conv2dOperator | None:
    """The Conv2d / ConvTranspose2d module ``m`` as an operator on one sample of ``shape`` (1, C, H, W), if 2-D."""
    if w.ndim != 4 or len(shape) != 4 or shape[0] != 1 or m.padding_mode not in ("zeros", "circular"):
        return None
    if not adjoint:
        left, right, top, bottom = m._reversed_padding_repeated_twice
        return Conv2dOperator.conv(w, shape[1:], stride=m.stride, padding=(top, bottom, left, right),
                                   dilation=m.dilation, groups=m.groups, circular=m.padding_mode == "circular")
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = m.stride, m.padding, m.output_padding, m.dilation
    out = ((shape[2] - 1) * sh - 2 * ph + dh * (w.shape[2] - 1) + oh + 1,
           (shape[3] - 1) * sw - 2 * pw + dw * (w.shape[3] - 1) + ow + 1)
    return Conv2dOperator.conv(w, (w.shape[1] * m.groups, *out), stride=m.stride, padding=m.padding,
                               dilation=m.dilation, groups=m.groups, adjoint=True)


def _conv_t(m: Any, shape: tuple[int, ...]) -> list[Op]:
    w = f64(m.weight)
    b = None if m.bias is None else f64(m.bias)
    op, wd = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[w.ndim - 3], undilate(w, m.dilation)
    return [AffineOp(lambda x, bias: op(x, wd, b if bias else None, m.stride, m.padding, m.output_padding, m.groups,
                                        1), w.numel() + (0 if b is None else b.numel()), _extra(m),
                     operator=_conv_operator(m, w, shape, adjoint=True))]


def _batch_norm(m: Any, shape: tuple[int, ...]) -> list[Op]:
    if m.training or m.running_mean is None:
        raise NotCovered("it is in training mode (or has no running statistics) and normalizes with batch "
                         "statistics, which is not affine; call model.eval()")
    return [batch_norm_op(shape, m.running_mean, m.running_var, m.weight, m.bias, float(m.eps))]


def _constant_pad(m: Any, shape: tuple[int, ...]) -> list[Op]:
    pads, value = m.padding, float(m.value)
    return [AffineOp(lambda x, b: F.pad(x, pads, value=value if b else 0.0), 0, _extra(m))]


def _prelu(m: Any, shape: tuple[int, ...]) -> list[Op]:
    if m.weight.numel() != 1:
        raise NotCovered("PReLU with one slope per channel is not supported (num_parameters=1 is)")
    return [leaky_relu(float(m.weight.reshape(-1)[0]))]


MODULES: dict[type, Callable[[Any, tuple[int, ...]], list[Op]]] = {
    nn.Linear: lambda m, s: [_linear_op(f64(m.weight), None if m.bias is None else f64(m.bias))],
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_t, nn.ConvTranspose2d: _conv_t, nn.ConvTranspose3d: _conv_t,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm, nn.BatchNorm3d: _batch_norm,
    nn.ConstantPad1d: _constant_pad, nn.ConstantPad2d: _constant_pad, nn.ConstantPad3d: _constant_pad,
    **{t: _dropout for t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)},
    **{t: _module_linear for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                   nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Upsample,
                                   nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
                                   nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                                   nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d,
                                   nn.CircularPad3d)},
    nn.Identity: lambda m, s: [], nn.LPPool2d: lp_pool_module,
    **{t: max_pool_module for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)},
    **{t: adaptive_max_pool_module for t in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)},
    nn.ReLU: lambda m, s: [relu()], nn.ReLU6: lambda m, s: [get_activation("relu6")],
    nn.LeakyReLU: lambda m, s: [leaky_relu(float(m.negative_slope))], nn.ELU: lambda m, s: [elu(float(m.alpha))],
    nn.Softplus: lambda m, s: [_softplus(float(m.beta), float(m.threshold))],
    nn.Tanh: lambda m, s: [get_activation("tanh")], nn.Sigmoid: lambda m, s: [get_activation("sigmoid")],
    nn.SiLU: lambda m, s: [get_activation("silu")],
    nn.GELU: lambda m, s: [get_activation("gelu_tanh" if m.approximate == "tanh" else "gelu")],
    nn.Hardtanh: lambda m, s: [hardtanh(float(m.min_val), float(m.max_val))],
    nn.Hardsigmoid: lambda m, s: HARDSIGMOID, nn.SELU: lambda m, s: SELU, nn.PReLU: _prelu,
}


def module_handler(m: nn.Module) -> Callable[[Any, tuple[int, ...]], list[Op]] | None:
    """The handler of a module's exact type, else of its nearest supported base class."""
    if type(m) in MODULES:
        return MODULES[type(m)]
    for cls in type(m).__mro__[1:]:
        if cls in MODULES:
            return MODULES[cls]
    return groupsort.module_ops(m)


_POOL_WHY = ("this pooling (a p-norm or random windows) is neither affine nor elementwise; max, adaptive max, "
             "average and 2-D L2-norm (LPPool2d with p = 2) pooling are supported")
_NORM_WHY = "it normalizes by statistics of the input itself, which is not affine"
MODULE_WHY: dict[str, str] = {
    **{n: _POOL_WHY for n in ("FractionalMaxPool2d", "LPPool1d", "LPPool3d")},
    **{n: _NORM_WHY for n in ("LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
                              "LocalResponseNorm", "RMSNorm")},
    "Softmax": "softmax couples all entries of a vector; certify the logits instead (remove a final softmax)",
    "LogSoftmax": "log-softmax couples all entries of a vector; certify the logits instead",
    "MultiheadAttention": "attention multiplies tensors computed from the input, which is not affine",
    **{n: "recurrent layers are not a chain of affine maps and elementwise activations"
       for n in ("RNN", "LSTM", "GRU")},
    "Embedding": "embedding lookups index with the input",
}


def module_why(m: nn.Module) -> str:
    name = type(m).__name__
    return MODULE_WHY.get(name, f"{name} is not an affine map or an elementwise slope-restricted activation known "
                                "to lipcert")


def function_why(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    if "with_indices" in name:
        return "it returns the argmax indices, which are not continuous"
    if "max_pool" in name:
        return _POOL_WHY
    if "softmax" in name:
        return "softmax couples all entries of a vector; certify the logits instead"
    if "norm" in name:
        return _NORM_WHY
    return f"{name} is not an affine map or an elementwise slope-restricted activation known to lipcert"
