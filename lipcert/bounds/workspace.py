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

from ..errors import InvalidArgumentError, UnsupportedConvGeometryError, UnsupportedSlopesError
from ..graph import AnyNetwork, GraphNetwork
from ..memory import check_budget, default_limit
from ..network import Network
from . import conv_closed_form
from .conv_grid import plan_bytes, plan_chain
from .conv_norm import conv_norm_bytes
from .matrix_free import DENSE_LAST_BYTES

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
    last = 2 * FLOAT64 * net.weights[-1].shape[0] ** 2  # G_L and its eigenvalue work (large for a feature map)
    return OVERHEAD + weights + matrices * FLOAT64 * widest**2 + last


def matrix_free_bytes(net: Network) -> int:
    """Estimated peak working memory of the matrix-free naive product (operator networks): the kernels
    and dense weights twice, the largest :func:`~lipcert.bounds.conv_norm.conv_norm_bytes` of a
    convolution, the smaller Gram matrix of the widest dense hidden layer (8 copies, as ``naive``),
    and :data:`OVERHEAD`."""
    ops = list(net.operators) or [None] * net.depth
    held = 2 * FLOAT64 * sum(w.numel() if op is None else op.kernel.numel() for w, op in zip(net.weights, ops))
    convs = max((conv_norm_bytes(op) for op in ops[:-1] if op is not None), default=0)
    dense = max((min(w.shape) for w, op in zip(net.weights[:-1], ops[:-1]) if op is None), default=0)
    last = (net.weights[-1].shape[0] * net.weights[-1].shape[1] * FLOAT64 if ops[-1] is None
            else conv_norm_bytes(ops[-1]) if ops[-1].dense_nbytes > DENSE_LAST_BYTES else 3 * ops[-1].dense_nbytes)
    return OVERHEAD + held + max(convs, MATRICES["naive"] * FLOAT64 * dense**2) + last


def lower_bytes(net: AnyNetwork) -> int:
    """Estimated peak working memory of :func:`~lipcert.bounds.lower.lower_bound`: products of each width
    with the input size (pattern bound) and a batch of Jacobians (samples x outputs x width); on a graph
    the widest layer of any of its chains, and two activations of it per input for autograd."""
    widths = ([w for chain in net.chains() for w in chain.widths] + list(net.widths) if isinstance(net, GraphNetwork)
              else net.widths)
    widest = max(widths, default=0)
    extra = 2 * widest * (net.input_dim + JACOBIAN_SAMPLES) if isinstance(net, GraphNetwork) else 0
    return OVERHEAD + FLOAT64 * (3 * widest * net.input_dim + 4 * JACOBIAN_SAMPLES * (net.output_dim + 2) * widest
                                 + extra)


def per_frequency_bytes(net: Network, method: str, options: Mapping[str, Any]) -> int:
    """Estimated peak working memory of the per-frequency pass of ``method`` on an operator network (bytes).

    One pass at a time (combined runs its rules one after another): the largest layer's frequency blocks
    (:func:`~lipcert.bounds.conv_grid.plan_bytes`), the dense tail's recursion as a single rule on its
    widths, and, where the naive product runs beside it, the matrix-free conv norms' frequency blocks and
    exact Gram matrices (:mod:`lipcert.bounds.conv_norm`, at most 8192 rows per group).  Raises
    :class:`~lipcert.errors.UnsupportedConvGeometryError` when the chain has no circular grid.
    """
    plan = plan_chain(net)
    tail = net.weights[len(plan.layers):]
    kernels = sum(layer.kernel.numel() for layer in plan.layers)
    weights = 2 * FLOAT64 * (kernels + sum(w.numel() for w in tail))
    widest = max((w.shape[0] for w in tail[:-1]), default=0)
    need = plan_bytes(plan, int(tail[0].shape[0]) if tail else 0) + SINGLE_RULE * FLOAT64 * widest**2
    naive = 0
    for op in (o for o in net.operators if o is not None):
        (c_out, h_out, w_out), (c_in, h, w) = op.conv_out_shape, op.in_shape
        blocks = 16 * 3 * (h + 4) * (w + 4) * c_out * c_in // op.groups
        gram = min(c_out * h_out * w_out, c_in * h * w) // op.groups
        naive = max(naive, blocks + (4 * FLOAT64 * gram**2 if gram <= 8192 and h_out * w_out <= 64 else 0))
    passes = len(options.get("rules", ())) + 1 if method == "combined" else 2
    gram = net.widths[-1] ** 2 if tail else 1  # all convolutions: a 1 x 1 G_L (conv_closed_form._last_conv)
    kept = passes * FLOAT64 * (sum(net.widths[1:]) + gram)  # every pass's multipliers and G_L
    return OVERHEAD + weights + kept + max(need, naive)


def choose_path(net: Network, method: str, label: str, options: Mapping[str, Any],
                max_bytes: float | None = None, prefer: str = "auto") -> tuple[str, int]:
    """``("dense" | "matrix-free" | "per-frequency", bytes)``: how registry method ``method`` (with ``options``;
    ``label`` names it in messages) runs on ``net``, and its estimated peak working memory.

    A dense network runs dense, after the memory check.  A network with operator layers runs dense when
    the method's estimate on the dense form (:func:`~lipcert.bounds.workspace.method_bytes`, whose weights
    are the dense matrices) fits ``max_bytes`` (default 80 % of the memory available); otherwise without
    dense matrices when the method has such a path: ``naive`` as the product of certified conv norms
    (:func:`~lipcert.bounds.workspace.matrix_free_bytes`), the closed forms of
    :data:`~lipcert.bounds.conv_closed_form.METHODS` per frequency where the chain has a circular grid
    and slopes in [0, 1] (:func:`~lipcert.bounds.workspace.per_frequency_bytes`).  Otherwise
    MemoryBudgetError (the dense estimate's, naming ``--max-dense-gb`` and why there is no other path).
    ``prefer="dense"`` or ``"matrix-free"`` takes that path whatever the estimates (still memory-checked).
    """
    if prefer not in ("auto", "dense", "matrix-free"):
        raise InvalidArgumentError(f"path must be 'auto', 'dense' or 'matrix-free', got {prefer!r}")
    dense = method_bytes(net, method, options)
    what = f"method {label} on widths {list(net.widths)}"
    if not net.has_operators:
        check_budget(what, dense, max_bytes)
        return "dense", dense
    limit = default_limit() if max_bytes is None else max_bytes
    if prefer == "dense" or (prefer == "auto" and dense <= limit):
        check_budget(what, dense, max_bytes)
        return "dense", dense
    if method == "naive":
        free = matrix_free_bytes(net)
        check_budget(what + " (matrix-free)", free, max_bytes)
        return "matrix-free", free
    reason = per_frequency_reason(net, method, label)
    if reason is None:
        needed = per_frequency_bytes(net, method, options)
        check_budget(what + " (per frequency)", needed, max_bytes)
        return "per-frequency", needed
    if prefer == "matrix-free":
        raise InvalidArgumentError(f"{what} has no matrix-free path: {reason}; without dense matrices lipcert "
                                   f"bounds naive and, per frequency, {', '.join(conv_closed_form.METHODS)}")
    check_budget(f"{what} (its convolutions as dense matrices; no matrix-free path: {reason}; without dense "
                 f"matrices lipcert bounds naive and, per frequency, {', '.join(conv_closed_form.METHODS)})",
                 dense, max_bytes)
    return "dense", dense


def graph_path(net: GraphNetwork, method: str, label: str, options: Mapping[str, Any],
               max_bytes: float | None = None, prefer: str = "auto") -> tuple[str, int]:
    """``("dense" | "operators", bytes)``: whether a graph with operator layers (convolutions in chains or
    shortcuts) is densified as a whole before ``method`` runs, and the dense form's estimated peak.

    Dense (every chain and shortcut materialized, so block certificates and the carried-form recursion
    run) when ``prefer`` is "dense" (memory-checked) or, with "auto", the estimate fits ``max_bytes``:
    twice the dense matrices of the whole graph plus the largest chain's working matrices
    (:func:`method_bytes`).  Otherwise "operators": each chain then takes its own path by
    :func:`choose_path` (docs/decisions.md 51).
    """
    if prefer not in ("auto", "dense", "matrix-free"):
        raise InvalidArgumentError(f"path must be 'auto', 'dense' or 'matrix-free', got {prefer!r}")
    work = max(method_bytes(c, method, options) - OVERHEAD - 2 * FLOAT64 * sum(w.numel() for w in c.weights)
               for c in net.chains()) if net.chains() else 0
    dense = OVERHEAD + 2 * net.dense_nbytes + work
    if not net.has_operators:  # each chain is checked by its own bound, as before
        return "dense", dense
    if prefer == "dense":
        check_budget(f"method {label} on the dense form of a graph of {len(net.stages)} stages", dense, max_bytes)
        return "dense", dense
    limit = default_limit() if max_bytes is None else max_bytes
    return ("dense" if prefer == "auto" and dense <= limit else "operators"), dense


def per_frequency_reason(net: Network, method: str, label: str) -> str | None:
    """Why ``method`` (named ``label``) has no per-frequency pass on ``net`` (None: it has one)."""
    if method not in conv_closed_form.METHODS:
        return f"{label} has no per-frequency form"
    try:
        conv_closed_form.check_chain(net)
    except (UnsupportedConvGeometryError, UnsupportedSlopesError) as err:
        return str(err)
    return None


__all__ = ["choose_path", "graph_path", "lower_bytes", "matrix_free_bytes", "method_bytes", "per_frequency_bytes",
           "per_frequency_reason"]
