"""Working memory of each bound method, estimated from the layer widths before anything is allocated.

``naive`` holds the smaller Gram matrix of one weight matrix at a time; the recursion methods hold a
few dense n x n float64 matrices per pass for the widest hidden layer (Gamma_k, M_k, its Cholesky
factor and their products), ``combined`` one set per rule it runs, and the optimizer also their
gradients.  The factors below are peaks measured on random nets of hidden
width 1000-2000 (docs/decisions.md 24), rounded up; the weights themselves are counted twice (the copy
each method converts to its dtype), and :data:`OVERHEAD` is added.  The lower bound holds products
of width x input size and a batch of Jacobians.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..network import Network
from .conv_norm import conv_norm_bytes

FLOAT64 = 8
OVERHEAD = 64 * 2**20
"""Bytes added to every estimate: LAPACK workspaces, libraries loaded on first use, allocator slack."""
MATRICES = {"naive": 8, "greedy": 12, "optimized": 64}
"""Dense n x n matrices at the peak, by method (single rules and eclipse-fast: :data:`SINGLE_RULE`)."""
SINGLE_RULE = 10
PER_COMBINED_RULE = 4
JACOBIAN_SAMPLES = 256


def method_bytes(net: Network, method: str, options: Mapping[str, Any]) -> int:
    """Estimated peak working memory of one bound method on ``net``, in bytes.

    The SDP methods are left to their own size guard (ProblemTooLargeError) and counted as the weights.
    """
    widest = max(net.widths[1:-1], default=0)
    weights = 2 * FLOAT64 * sum(w.numel() for w in net.weights)
    if method in ("eclipse", "lipsdp-neuron", "lipsdp-layer"):
        return OVERHEAD + weights
    if method == "naive":  # the smaller Gram matrix of each hidden layer's weights
        widest = max((min(w.shape) for w in net.weights[:-1]), default=0)
    if method == "combined":
        matrices = PER_COMBINED_RULE * (len(options.get("rules", ())) + 1)
    else:
        matrices = MATRICES.get(method, SINGLE_RULE)
    return OVERHEAD + weights + matrices * FLOAT64 * widest**2


def matrix_free_bytes(net: Network) -> int:
    """Estimated peak working memory of the matrix-free naive product (operator networks): the kernels
    and dense weights twice, the largest :func:`~lipcert.bounds.conv_norm.conv_norm_bytes` of a
    convolution, the smaller Gram matrix of the widest dense hidden layer (8 copies, as ``naive``),
    and :data:`OVERHEAD`."""
    ops = list(net.operators) or [None] * net.depth
    held = 2 * FLOAT64 * sum(w.numel() if op is None else op.kernel.numel() for w, op in zip(net.weights, ops))
    convs = max((conv_norm_bytes(op) for op in ops[:-1] if op is not None), default=0)
    dense = max((min(w.shape) for w, op in zip(net.weights[:-1], ops[:-1]) if op is None), default=0)
    last = net.weights[-1].shape[0] * net.weights[-1].shape[1] * FLOAT64 * (1 if ops[-1] is None else 3)
    return OVERHEAD + held + max(convs, MATRICES["naive"] * FLOAT64 * dense**2) + last


def lower_bytes(net: Network) -> int:
    """Estimated peak working memory of :func:`~lipcert.bounds.lower.lower_bound`: products of each width
    with the input size (pattern bound) and a batch of Jacobians (samples x outputs x width)."""
    widest = max(net.widths, default=0)
    return OVERHEAD + FLOAT64 * (3 * widest * net.input_dim + 4 * JACOBIAN_SAMPLES * (net.widths[-1] + 2) * widest)


__all__ = ["lower_bytes", "matrix_free_bytes", "method_bytes"]
