"""A lipcert model rebuilt as a float64 ``torch.nn.Sequential`` on batches, for bound-propagation tools.

The module computes exactly the function of the :class:`~lipcert.Network` that lipcert bounds
(same chain, same prepended normalization, same float64 parameters), so a verifier such as
auto_LiRPA and lipcert certify the same model.  Built from the adapters' :class:`Conversion`,
layer by layer, convolutions stay convolutions:

* an affine layer that carries an equivalent module (``Layer.module``: convolutions) uses it;
* a layer that only reorders values in row-major order (Flatten, Reshape, Squeeze, ...) becomes
  a reshape, checked by applying it to ``0, 1, 2, ...``;
* an elementwise scaling and shift (a normalization, Sub/Div by constants) becomes ``x * w + b``;
* any other affine layer becomes a dense ``Linear`` of its materialized matrix (exact);
* an activation becomes a module calling the activation's own function.

From a :class:`~lipcert.Network` alone (no conversion, e.g. ``.npz`` weights) the module is the
dense chain ``Flatten, Linear, act, ..., Linear``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from lipcert.activations import Activation
from lipcert.errors import ModelLoadError
from lipcert.network import Network

from .graph import Conversion, DenseBlock, Layer, materialize

# kernel and stride are n-tuples for ConvNd: the classes' stubs fix n, which the lookup by n loses
_CONV_MODULES: dict[int, Callable[..., _ConvNd]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Reshape(nn.Module):
    """``x.reshape(-1, *shape)``: a row-major reshape of every sample (-1, not the batch size, so that
    a traced graph takes any batch)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Scale(nn.Module):
    """``x * weight + bias`` elementwise (weight and bias have the shape of one sample with its batch axis of 1)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


class ActivationModule(nn.Module):
    """An elementwise :class:`~lipcert.Activation` as a module (calls its torch function)."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        if activation.fn is None:
            raise ModelLoadError(f"activation {activation.name!r} is given only by its slopes and has no function "
                                 "to rebuild the model with")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return self.activation.name


def conv_module(weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int], pad: Sequence[int],
                groups: int) -> nn.Module:
    """A float64 ``ConvNd`` (dilation 1, one group) after zero padding ``pad`` (``F.pad`` order: last axis first).

    A grouped convolution becomes one convolution with a block-diagonal kernel (the same map):
    auto_LiRPA 0.3's CROWN bounds through grouped convolutions were unsound in our tests.
    """
    n = weight.ndim - 2
    if groups > 1:
        out_g, in_g = weight.shape[0] // groups, weight.shape[1]
        full = weight.new_zeros(weight.shape[0], in_g * groups, *weight.shape[2:])
        for g in range(groups):
            full[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = weight[g * out_g:(g + 1) * out_g]
        weight, groups = full, 1
    conv = _CONV_MODULES[n](weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=tuple(stride),
                            bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None and conv.bias is not None:  # conv has a bias exactly when ``bias`` is given
            conv.bias.copy_(bias.reshape(-1))
    conv.requires_grad_(False)
    begins, ends = list(pad[0::2])[::-1], list(pad[1::2])[::-1]
    if begins == ends:
        conv.padding = tuple(int(b) for b in begins)
        return conv
    return nn.Sequential(_Pad(pad), conv)


class _Pad(nn.Module):
    """Zero padding (``F.pad`` order), for asymmetric convolution pads."""

    def __init__(self, pad: Sequence[int]) -> None:
        super().__init__()
        self.pad = tuple(int(p) for p in pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pad)


def torch_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` without gradients (for ``Layer.module`` of torch models)."""
    out = copy.deepcopy(module).to(torch.float64)
    return out.requires_grad_(False)


def _is_reshape(layer: Layer) -> bool:
    size = math.prod(layer.in_shape)
    if size != math.prod(layer.out_shape) or layer.fn is None:
        return False
    probe = torch.arange(size, dtype=torch.float64)
    with torch.no_grad():
        out = layer.fn(probe.reshape(layer.in_shape), True)
    return tuple(out.shape) == tuple(layer.out_shape) and torch.equal(out.reshape(-1), probe)


def _elementwise(layer: Layer) -> nn.Module | None:
    """A module equal to the layer when it maps every entry by its own ``w x + b``, else None.

    Per-channel factors on an image (a normalization) become a 1x1 convolution (diagonal kernel):
    auto_LiRPA 0.3 fails on a Mul/Add by a full tensor before a convolution.
    """
    if tuple(layer.in_shape) != tuple(layer.out_shape) or layer.fn is None:
        return None
    with torch.no_grad():
        w = layer.fn(torch.ones(layer.in_shape, dtype=torch.float64), False)
        probe = torch.randn(layer.in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        if not torch.allclose(layer.fn(probe, False), w * probe, rtol=1e-12, atol=0.0):
            return None
        b = layer.fn(torch.zeros(layer.in_shape, dtype=torch.float64), True)
    if w.ndim == 4 and torch.equal(w, w[..., :1, :1].expand_as(w)) and torch.equal(b, b[..., :1, :1].expand_as(b)):
        c = w.shape[1]
        return conv_module(w[0, :, 0, 0].reshape(c, 1, 1, 1), b[0, :, 0, 0], (1, 1), (0, 0, 0, 0), c)
    return Scale(w.clone(), b.clone())


def _dense(layer: Layer) -> nn.Module:
    weight, bias = materialize(DenseBlock((layer,), layer.in_shape, layer.out_shape, None))
    linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    linear.requires_grad_(False)
    parts: list[nn.Module] = [linear]
    if len(layer.in_shape) != 2:
        parts.insert(0, nn.Flatten())
    if len(layer.out_shape) != 2:
        parts.append(Reshape(layer.out_shape[1:]))
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _layer_module(layer: Layer) -> nn.Module:
    if layer.activation is not None:
        return ActivationModule(layer.activation)
    if layer.module is not None:
        return layer.module
    if _is_reshape(layer):
        return Reshape(layer.out_shape[1:])
    return _elementwise(layer) or _dense(layer)


def from_conversion(conv: Conversion) -> nn.Sequential:
    """The chain of a conversion as a float64 module on batches of inputs of shape ``conv.input_shape``."""
    conv.raise_issues()
    if not conv.has_batch_axis or any(not shape or shape[0] != 1 for layer in conv.layers
                                      for shape in (layer.in_shape, layer.out_shape)):
        raise ModelLoadError(f"{conv.source}: the model has no batch axis, or a layer moves it; rebuild it from its "
                             "Network instead (to_torch(lipcert.load(...)))")
    parts = [_layer_module(layer) for layer in conv.layers]
    if len(conv.layers[-1].out_shape) != 2:
        parts.append(nn.Flatten())
    return nn.Sequential(*parts).eval()


def from_network(net: Network) -> nn.Sequential:
    """The dense chain of a Network: Flatten, then Linear and activation modules (float64)."""
    parts: list[nn.Module] = [nn.Flatten()]
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        linear = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(b)
        parts.append(linear.requires_grad_(False))
        if k < len(net.activations):
            parts.append(ActivationModule(net.activations[k]))
    return nn.Sequential(*parts).eval()


def conversion(source: str | Path | nn.Module, *, input_shape: Sequence[int] | None = None,
               mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None
               ) -> Conversion:
    """The adapters' conversion of an ONNX file, a ``.pt``/``.pth`` module file or a torch module,
    with the ``(x - mean) / std`` normalization prepended as :func:`lipcert.load` does."""
    from .common import as_channels, normalization_layer

    if isinstance(source, nn.Module):
        from .torch import analyze_module

        conv = analyze_module(source, input_shape=input_shape)
    else:
        path = Path(source)
        if path.suffix.lower() == ".onnx":
            from .onnx import analyze_onnx

            conv = analyze_onnx(path, input_shape=input_shape)
        elif path.suffix.lower() in (".pt", ".pth"):
            from .torch import analyze_module, load_file

            conv = analyze_module(load_file(path), input_shape=input_shape, source=str(path))
        else:
            raise ModelLoadError(f"cannot rebuild {path.name!r} as a torch module with its structure: expected "
                                 ".onnx, .pt or .pth (load other models with lipcert.load and pass the Network)")
    conv.raise_issues()
    m, s = as_channels(mean, "mean"), as_channels(std, "std")
    if m is not None or s is not None:
        conv = conv.with_first_layer(normalization_layer(m, s, conv, conv.channels_last))
    return conv


def to_torch(source: Any, *, input_shape: Sequence[int] | None = None, mean: Sequence[float] | float | None = None,
             std: Sequence[float] | float | None = None) -> nn.Sequential:
    """A float64 ``nn.Sequential`` computing the same function as ``lipcert.load(source, ...)``.

    Parameters
    ----------
    source : Network, Conversion, path (.onnx, .pt, .pth) or torch.nn.Module
        A Network gives the dense chain; the others keep their structure (convolutions).
    input_shape, mean, std
        As for :func:`lipcert.load`.

    Returns
    -------
    torch.nn.Sequential
        Takes raw inputs of shape ``(B, *input_shape)`` and returns logits ``(B, K)``.
    """
    if isinstance(source, Network):
        return from_network(source)
    if isinstance(source, Conversion):
        return from_conversion(source)
    return from_conversion(conversion(source, input_shape=input_shape, mean=mean, std=std))
