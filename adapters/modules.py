"""Leaf ``torch.nn`` modules in float64 that the adapters and the rebuild share.

A row-major reshape per sample, an elementwise ``x * w + b``, an activation calling its own
function, a convolution after zero padding (grouped convolutions as one block-diagonal kernel),
layers with residual merges evaluated by tensor name, and a float64 copy of a user's module.  Nothing here reads models or knows the layer chain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from lipcert.activations import Activation
from lipcert.errors import ModelLoadError

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
    """``x * weight + bias`` elementwise (weight and bias have the shape of one sample with its batch axis of 1),
    or ``x + bias`` when ``weight`` is None.

    The parameters are kept without the batch axis (the same broadcast): auto_LiRPA 0.3's ``BoundAdd``
    and ``BoundMul`` prepend the batch to a parameter's shape and fail their shape check on a leading 1,
    and its ``BoundMul`` fails on an image times a constant in patches mode (hence no weight for a bias).
    """

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = None if weight is None else nn.Parameter(weight[0] if weight.ndim > 1 else weight,
                                                               requires_grad=False)
        self.bias = nn.Parameter(bias[0] if bias.ndim > 1 else bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias if self.weight is None else x * self.weight + self.bias


class ActivationModule(nn.Module):
    """An elementwise :class:`~lipcert.Activation` as a module (calls its torch function)."""

    def __init__(self, activation: Activation, sample_shape: Sequence[int] | None = None) -> None:
        """``sample_shape``: the shape of one input sample, when it is not flat (a masked activation reshapes)."""
        super().__init__()
        self.sample_shape = None if sample_shape is None else tuple(int(s) for s in sample_shape)
        if activation.fn is None:
            raise ModelLoadError(f"activation {activation.name!r} is given only by its slopes and has no function "
                                 "to rebuild the model with")
        self.activation = activation
        # |z| = z + 2 relu(-z): abs_or_identity as ReLUs and a constant linear map, which verifiers (auto_LiRPA)
        # bound; z + relu(-z) @ diag(2 mask) on the flattened sample
        mask = activation.mask
        self.register_buffer("twice_mask", None if mask is None else
                             torch.diag(2.0 * torch.tensor(mask, dtype=torch.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        twice = self.twice_mask
        if isinstance(twice, torch.Tensor):
            flat = x.flatten(1)
            out = flat + torch.relu(-flat) @ twice
            if x.dim() == 2:
                return out
            # -1 and the stored sample shape, not x.shape: auto_LiRPA's Reshape keeps a traced x.shape, whose
            # batch size is that of the example input
            return out.reshape(-1, *(self.sample_shape or x.shape[1:]))
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


class Concat(nn.Module):
    """``torch.cat([a, b], axis)``: the module of a Concat merge in a :class:`LayerGraph`."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], self.axis)


class LayerGraph(nn.Module):
    """Layers evaluated by tensor name, with merges ``a + b`` / ``a - b`` / ``[a; b]``: a model with residual
    connections or concatenated branches.

    ``steps`` lists, in evaluation order, (source, target, other, subtract): the layer's module reads
    tensor ``source`` and writes ``target``; a merge (``other`` not empty) writes ``source + other`` (or
    ``source - other``; its module is unused), or, when its module is a :class:`Concat`, the two joined.
    The output is the last target, flattened per sample.
    """

    def __init__(self, input_name: str, steps: Sequence[tuple[str, str, str, bool]], layers: Sequence[nn.Module],
                 flat_merges: bool = False) -> None:
        super().__init__()
        self.input_name = input_name
        self.flat_merges = flat_merges  # a merge of non-image tensors (auto_LiRPA then needs conv_mode "matrix")
        self.steps: list[tuple[str, str, str, bool]] = [tuple(step) for step in steps]  # type: ignore[misc]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for (source, target, other, subtract), layer in zip(self.steps, self.layers):
            if other and isinstance(layer, Concat):
                env[target] = layer(env[source], env[other])
            elif other:
                env[target] = env[source] - env[other] if subtract else env[source] + env[other]
            else:
                env[target] = layer(env[source])
        return env[self.steps[-1][1]].flatten(1)


def torch_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` without gradients (for ``Layer.module`` of torch models)."""
    out = copy.deepcopy(module).to(torch.float64)
    return out.requires_grad_(False)
