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
* a model with residual merges (Add/Sub of two branches) becomes a :class:`~.modules.LayerGraph` that
  evaluates the same layers by tensor name, so auto_LiRPA sees the additions;
* an activation becomes a module calling the activation's own function.

From a :class:`~lipcert.Network` alone (no conversion, e.g. ``.npz`` weights) the module is the
dense chain ``Flatten, Linear, act, ..., Linear``.  Model files are read by :func:`.files.read`,
the dispatch :func:`lipcert.load` uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipcert.errors import ModelLoadError, UnsupportedOperatorError
from lipcert.network import Network, require_network

from .common import as_channels, normalization_layer
from .files import read
from .graph import Conversion, DenseBlock, Layer, materialize, undilate
from .modules import ActivationModule, Concat, LayerGraph, Reshape, Scale, conv_module
from .residual import SUBTRACTIONS, has_merges
from .torch import analyze_module


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
    auto_LiRPA 0.3 fails on a Mul/Add by a full tensor before a convolution; factors on flat vectors (SLL's t,
    a residual's scalar mixing) become a diagonal Linear, since its BoundMul fails on those too.
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
    if w.ndim == 2:  # flat: auto_LiRPA 0.3's BoundMul fails on x * w of (1, n) tensors; a diagonal Linear is the same map
        linear = nn.Linear(w.shape[1], w.shape[1], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.diag(w[0]))
            linear.bias.copy_(b[0])
        return linear.requires_grad_(False)
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
        return ActivationModule(layer.activation, layer.in_shape[1:])
    if layer.module is not None:
        return layer.module
    if _is_reshape(layer):
        return Reshape(layer.out_shape[1:])
    return _elementwise(layer) or _dense(layer)


def from_conversion(conv: Conversion) -> nn.Module:
    """The layers of a conversion as a float64 module on batches of inputs of shape ``conv.input_shape``:
    an ``nn.Sequential`` for a chain, a :class:`~.modules.LayerGraph` for a model with residual merges.

    An L2-norm pooling or L2-norm residual is refused (UnsupportedOperatorError naming it): not rebuilt for verifiers."""
    conv.raise_issues()
    cut = next((layer for layer in conv.layers if layer.stage is not None or layer.merge_eps is not None), None)
    if cut is not None:
        what = "an L2-norm pooling" if cut.stage is not None else "an L2-norm residual merge"
        raise UnsupportedOperatorError(
            f"{conv.source}: {cut.op_type} node {cut.name!r} is {what} ({cut.detail}): lipcert bounds it as a stage "
            "with its Lipschitz constant (docs/decisions.md 43-44), but does not rebuild it for auto_LiRPA / CROWN "
            "(a square root, whose slope is unbounded at 0); lipcert.lipschitz, lower_bound and certify (global "
            "radii) handle this model")
    if not conv.has_batch_axis or any(not shape or shape[0] != 1 for layer in conv.layers
                                      for shape in (layer.in_shape, layer.out_shape)):
        raise ModelLoadError(f"{conv.source}: the model has no batch axis, or a layer moves it; rebuild it from its "
                             "Network instead (to_torch(lipcert.load(...)))")
    if has_merges(conv):
        steps = [(layer.source, layer.target, layer.other, layer.op_type in SUBTRACTIONS) for layer in conv.layers]
        modules = [(nn.Identity() if layer.axis is None else Concat(layer.axis)) if layer.other else
                   _layer_module(layer) for layer in conv.layers]
        flat = any(layer.other and len(layer.out_shape) != 4 for layer in conv.layers)
        return LayerGraph(conv.layers[0].source, steps, modules, flat).eval()
    parts = [_layer_module(layer) for layer in conv.layers]
    if len(conv.layers[-1].out_shape) != 2:
        parts.append(nn.Flatten())
    return nn.Sequential(*parts).eval()


def from_network(net: Network) -> nn.Sequential:
    """The chain of a Network: Linear (or, for a zero-padded convolution kept as an operator, padding and
    Conv2d with the bias) and activation modules (float64), reshaped between them where needed.

    A convolution's output and its activation stay images (auto_LiRPA 0.3's patches mode reads the channel
    axis of every sum); a bias that varies within a channel (a normalization folded into a zero-padded
    kernel) is added to the flattened output of a bias-free convolution, and the module's ``flat_merges``
    tells :func:`~.lirpa.bounded_module` to use auto_LiRPA's matrix mode.  Other operator layers (circular padding,
    transposed convolutions) become Linear modules through their memory-checked dense matrices.
    """
    ops = list(net.operators) or [None] * net.depth
    # the previous module's output shape when it is an image (alpha-CROWN's patches fail through a reshape there)
    image = tuple(net.input_shape) if ops[0] is not None and ops[0].input_shape == tuple(net.input_shape) else None
    parts: list[nn.Module] = [] if image else [nn.Flatten()]
    flat_sums = False
    for k, (w, b, op) in enumerate(zip(net.weights, net.biases, ops)):
        if op is not None and not op.adjoint and not op.circular:
            t, bottom, left, r = op.padding
            bias = b.reshape(op.output_shape)
            channel = bias[:, :1, :1]
            constant = bool(torch.equal(bias, channel.expand_as(bias)))
            conv = conv_module(undilate(op.kernel, op.dilation), channel.flatten() if constant else None, op.stride,
                               (left, r, t, bottom), op.groups)
            parts += ([] if image == op.input_shape else [Reshape(op.input_shape)]) + [conv]
            image = op.output_shape
            if not constant:  # auto_LiRPA 0.3 adds a constant image wrongly in patches mode: a flat sum, matrix mode
                parts += [nn.Flatten(), Scale(None, b[None].clone())]
                image, flat_sums = None, True
        else:
            dense = w if op is None else op.dense()
            linear = nn.Linear(dense.shape[1], dense.shape[0], dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(dense)
                linear.bias.copy_(b)
            parts += [nn.Flatten(), linear.requires_grad_(False)] if image else [linear.requires_grad_(False)]
            image = None
        if k < len(net.activations):
            parts.append(ActivationModule(net.activations[k]))
    if image:
        parts.append(nn.Flatten())
    module = nn.Sequential(*parts).eval()
    setattr(module, "flat_merges", flat_sums)  # read by lirpa.bounded_module (auto_LiRPA's conv_mode)
    return module


def chain_of(source: str | Path | nn.Module, *, input_shape: Sequence[int] | None = None,
             mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None
             ) -> Conversion | Network:
    """What :func:`to_torch` rebuilds for a model file or a torch module.

    The adapters' conversion of a torch module or of an ``.onnx``/``.pt``/``.pth`` file
    (:func:`.files.read`), with the ``(x - mean) / std`` normalization prepended as
    :func:`lipcert.load` does; for an ``.npz`` file, its Network (the dense chain it stores;
    mean and std are refused as by :func:`lipcert.load`).

    Raises
    ------
    ModelLoadError, UnsupportedOperatorError
        As :func:`lipcert.load` for the same source.
    """
    if isinstance(source, nn.Module):
        conv = analyze_module(source, input_shape=input_shape)
    else:
        found = read(source, input_shape=input_shape)
        if found.conversion is None:
            return require_network(found.network(mean=mean, std=std), "to_torch")  # an .npz file is a chain
        conv = found.conversion
    conv.raise_issues()
    m, s = as_channels(mean, "mean"), as_channels(std, "std")
    if m is not None or s is not None:
        conv = conv.with_first_layer(normalization_layer(m, s, conv, conv.channels_last))
    return conv


def to_torch(source: Any, *, input_shape: Sequence[int] | None = None, mean: Sequence[float] | float | None = None,
             std: Sequence[float] | float | None = None) -> nn.Module:
    """A float64 ``nn.Sequential`` (a :class:`~.modules.LayerGraph` for residual models) computing the same
    function as ``lipcert.load(source, ...)``.

    Parameters
    ----------
    source : Network, Conversion, path (.onnx, .pt, .pth, .npz) or torch.nn.Module
        A Network (also that of an .npz file) gives the dense chain; the others keep their
        structure (convolutions).
    input_shape, mean, std
        As for :func:`lipcert.load`.

    Returns
    -------
    torch.nn.Module
        Takes raw inputs of shape ``(B, *input_shape)`` and returns logits ``(B, K)``.
    """
    if not isinstance(source, Network | Conversion):
        source = chain_of(source, input_shape=input_shape, mean=mean, std=std)
    return from_network(source) if isinstance(source, Network) else from_conversion(source)
