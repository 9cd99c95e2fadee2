"""Library layers that torch.fx cannot follow, traced through forwards with their weights read at load time.

orthogonium's ``SDPBasedLipschitzDense`` (SLL) computes its scaling t from W and q inside forward (and
its ``safe_inv`` assigns into a tensor, which fx cannot trace), ``SDPBasedLipschitzResBlock`` (conv SLL)
computes its kernel by an AOL parametrization (fx keeps parametrized modules whole); ``ConcatResidual`` splits its input with
``chunk`` and concatenates two branches.  Both are recognized by class (module path and name, through
the MRO, as :mod:`.groupsort` does for activations) and traced through an equivalent forward made of
operators the fx adapter converts, with the weights computed once, in float64, by the library's own
code:

* SLL: y = x - 2 W^T diag(t) relu(W x + b), a residual block with identity shortcut (the subtraction
  negates the branch's last layer);
* conv SLL: y = x - 2 conv^T(relu(conv(x) + b)) with the parametrized kernel, the same block on feature maps;
* SLL x AOC (strided): y = conv_s(x) - 2 conv_b(relu(conv_a(x) + b)), a block with a strided conv shortcut;
* ConcatResidual with ``fn``: y = [x1; fn(x2)] for x = [x1; x2] split on axis 1 (x1 takes the larger
  half, as ``chunk`` does), written y = S x + E fn(P x) with S = diag(I, 0) (x with its second half
  padded away) and P, E the selection and zero padding on axis 1: a residual block whose linear
  shortcut is S and whose branch is fn between P and E.  ``fn`` is traced as usual, so a nested
  residual inside it is refused by :mod:`.residual` with the node named;
* L2NormResidual: sqrt(x^2 / 2 + fn(x)^2 / 2 + eps), traced with the merge as one call of
  :func:`.l2pool.l2_norm_merge` (an fx leaf function), which the fx adapter records as an L2-norm merge of the
  two branches (:func:`.l2pool.norm_merge_layer`) and :mod:`.residual` turns into a
  :class:`~lipcert.norm_residual.NormResidual` stage (decisions 44).

The traced copy holds the computed constants; the user's module is never changed, and the conversion
is checked against the original module's own output as every conversion is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .l2pool import l2_norm_merge

Forward = Callable[..., Any]


torch.fx.wrap("l2_norm_merge")  # an fx leaf in the forwards below


def _sll_dense(m: Any) -> Forward:
    """y = x - 2 W^T diag(t) act(W x + b), t = the library's ``compute_t`` on a float64 copy of the layer."""
    with torch.no_grad():
        frozen = copy.deepcopy(m).double()
        t = frozen.compute_t().detach()
        w, b = frozen.weight.detach(), frozen.bias.detach().reshape(-1)

    def forward(x: Any) -> Any:
        return x - F.linear(t * m.activation(F.linear(x, w, b)), 2.0 * w.T)

    return forward


def _sll_conv(m: Any) -> Forward:
    """y = x - 2 conv^T(act(conv(x) + b)) with the kernel of the library's AOL parametrization, in float64."""
    with torch.no_grad():
        frozen = copy.deepcopy(m).double()
        k, b = frozen.kernel.detach(), frozen.bias.detach()
    pad, groups = m.padding, m.groups

    def forward(x: Any) -> Any:
        inner = m.activation(F.conv2d(x, k, padding=pad, groups=groups) + b)
        return x - F.conv_transpose2d(inner, 2.0 * k, padding=pad, groups=groups)

    return forward


def _sll_aoc(m: Any) -> Forward:
    """y = conv_s(x) - 2 conv_b(act(conv_a(x) + b)), the three kernels fused by orthogonium's own
    ``fast_matrix_conv`` from the AOL kernel and the orthogonal pre/post convolutions, in float64."""
    from orthogonium.layers.conv.SLL.sll_layer import fast_matrix_conv, transpose_kernel

    with torch.no_grad():
        f = copy.deepcopy(m).double()
        pre, post, kernel, groups = f.pre_conv.weight, f.post_conv.weight, f.kernel, f.groups
        k_a = fast_matrix_conv(pre, kernel, groups=groups).detach()
        k_b = fast_matrix_conv(transpose_kernel(kernel, groups=groups), post, groups=groups).detach()
        k_s = fast_matrix_conv(pre, post, groups=groups).detach()
        b = f.bias.detach()
    pad, stride, skip_pad = m.padding, m.stride, m.skip_kernel_size // 2

    def forward(x: Any) -> Any:
        inner = m.activation(F.conv2d(x, k_a, padding=pad, groups=groups) + b)
        skip = F.conv2d(x, k_s, padding=skip_pad, stride=stride, groups=groups)
        return skip - F.conv2d(inner, 2.0 * k_b, padding=pad, stride=stride, groups=groups)

    return forward


def _concat_residual(m: Any) -> Forward:
    """y = [x1; fn(x2)] on axis 1 as x with its second half zeroed plus fn(x2) padded in front."""
    def forward(x: Any) -> Any:
        channels = x.size(1)
        second = channels // 2
        first = channels - second
        shortcut = torch.movedim(F.pad(torch.movedim(x.narrow(1, 0, first), 1, -1), (0, second)), -1, 1)
        out = m.fn(x.narrow(1, first, second))
        return shortcut + torch.movedim(F.pad(torch.movedim(out, 1, -1), (first, 0)), -1, 1)

    return forward


def _l2_norm_residual(m: Any) -> Forward:
    """sqrt(x^2 / 2 + fn(x)^2 / 2 + eps) with the merge as one :func:`l2_norm_merge` call."""
    def forward(x: Any) -> Any:
        return l2_norm_merge(x, m.fn(x), float(m.eps))

    return forward


_LIBRARIES: dict[str, dict[str, Callable[[Any], Forward]]] = {
    "orthogonium": {"SDPBasedLipschitzDense": _sll_dense, "SDPBasedLipschitzResBlock": _sll_conv,
                    "SLLxAOCLipschitzResBlock": _sll_aoc,
                    "ConcatResidual": _concat_residual, "L2NormResidual": _l2_norm_residual},
}


def stale_dtype(module: nn.Module) -> str | None:
    """Why ``module`` may fail in its own dtype: an orthogonium parametrization (``L2Normalize`` and the
    modules built on it) keeps the dtype it was built with in ``.dtype``, which ``.double()`` does not
    change; None when there is none."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    for m in module.modules():
        kept = getattr(m, "dtype", None)
        if type(m).__module__.startswith("orthogonium.") and isinstance(kept, torch.dtype) and dtypes - {kept}:
            return (f"orthogonium's {type(m).__name__} keeps the dtype it was built with ({kept}) after .double() or "
                    f".to(); build the model under torch.set_default_dtype(torch.float64), or load it in {kept}")
    return None


def _factory(m: nn.Module) -> Callable[[Any], Forward] | None:
    for cls in type(m).__mro__:
        for prefix, classes in _LIBRARIES.items():
            if cls.__module__.startswith(prefix + ".") and cls.__name__ in classes:
                return classes[cls.__name__]
    return None


def holds_library_layer(module: nn.Module) -> bool:
    """True when ``module`` holds a layer :func:`traced_forwards` rewrites."""
    return any(_factory(m) is not None for m in module.modules())


def traced_forwards(module: nn.Module) -> dict[int, Forward]:
    """The traceable forward of every library layer in ``module`` that lipcert recognizes by class, by the
    layer's id; computed before tracing (fx would trace the parametrizations the weights are read through)."""
    out: dict[int, Forward] = {}
    for m in module.modules():
        factory = _factory(m)
        if factory is not None:
            out[id(m)] = factory(m)
    return out
