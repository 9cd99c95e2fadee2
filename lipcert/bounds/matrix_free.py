"""Bounds of networks whose layers are kept as operators (convolutions), without dense matrices.

:func:`naive` is math.md 4.1's product of spectral norms, with each convolution's norm certified
by :func:`lipcert.bounds.conv_norm.conv_norm` and each dense layer's by its Gram matrix's certified
lambda_max; memory is that of the weights and one activation map (docs/decisions.md 21).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..network import Network
from .closed_form import spectral_norm_squared
from .conv_norm import conv_norm
from .recursion import RecursionResult

DENSE_LAST_BYTES = 2**26
"""A last layer kept as an operator gives the Gram W_L W_L^T when its dense matrix fits these bytes (64 MB),
else the 1 x 1 Gram [[||W_L||^2]] (a bound on Lip(f) alone; docs/decisions.md 51)."""


def naive(net: Network) -> RecursionResult:
    """prod_{k<L} ||A_k||_2 max_j max(|alpha_kj|, |beta_kj|) as G = c^2 W_L W_L^T, matrix-free.

    ``extras["layer_norms"]`` lists the certified norm of every hidden layer's map and
    ``extras["norm_methods"]`` how it was obtained (``dense``, or conv_norm's estimator).
    """
    ops = list(net.operators) if net.operators else [None] * net.depth
    log_scale, norms, methods = 0.0, [], []
    for w, op, (alpha, beta) in zip(net.weights[:-1], ops[:-1], net.slopes()):
        slope = float(torch.maximum(alpha.abs(), beta.abs()).max())
        if op is None:
            norm, how = math.sqrt(max(spectral_norm_squared(w), 0.0)), "dense"
        else:
            result = conv_norm(op)
            norm, how = result.value, f"conv {result.method}"
        norms.append(norm)
        methods.append(how)
        if norm == 0.0 or slope == 0.0:
            k = net.output_dim
            return RecursionResult(torch.zeros(k, k, dtype=torch.float64), 0.0, [], [], ["constant"],
                                   {"layer_norms": norms, "norm_methods": methods})
        log_scale += 2 * (math.log(norm) + math.log(slope))
    extras: dict[str, Any] = {"layer_norms": norms, "norm_methods": methods}
    op = ops[-1]
    if op is not None and op.dense_nbytes > DENSE_LAST_BYTES:  # a feature map: ||W_L||^2 as a 1 x 1 Gram
        result = conv_norm(op)
        gram = torch.tensor([[result.value**2]], dtype=torch.float64)
        return RecursionResult(gram, log_scale, [], [], [], {**extras, "scalar_gram": True})
    last = net.weights[-1] if op is None else op.dense()
    return RecursionResult(last @ last.T, log_scale, [], [], [], extras)
