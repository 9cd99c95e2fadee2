"""Converted models with residual connections: the layer graph as a :class:`~lipcert.graph.GraphNetwork`.

An adapter records the merge of two branches (ONNX ``Add``/``Sub``/``Concat``, fx ``+``/``-``/``torch.cat``)
as a :class:`~.graph.Layer` with a second input ``other`` (and, for a concatenation, its ``axis``).  Walking
from the input, every tensor read by two layers must open a block: its two paths run, layer by layer with
one reader each, to one merge; the path without an activation is the shortcut S (empty: the identity; else
its affine layers materialized as one dense matrix), the other is the branch g (a chain).  A concatenation
[S x + c; g(x)] (DenseNet's [x; g(x)]) is the residual block E_1 (S x + c) + E_2 g(x), E_1 and E_2 the
injections of the two parts into the joined tensor (in either order), which the block bounds take as any
shortcut and branch (docs/decisions.md 47); a concatenation [g_1(x); g_2(x)] of two branches with
activations of the same depth and the same activation at each layer is one chain with stacked first and
block-diagonal later weights.  The layers between blocks become chains and the activations right after or
before a block become the activations between stages.  An L2-norm pooling layer (``Layer.stage``,
decisions 43) is a stage of its own between the chains; a fork that merges in orthogonium's L2NormResidual
merge (``Layer.merge_eps``) is a :class:`~lipcert.norm_residual.NormResidual` stage when one of its paths is
the input itself (decisions 44).  Anything else (an Add or Sub of two branches with
activations, a concatenation of branches of different structure, nested forks, a fork into three paths, a
fork whose paths merge in different places) is an :class:`~lipcert.errors.UnsupportedOperatorError`
naming the nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from lipcert.activations import Activation
from lipcert.errors import UnsupportedOperatorError
from lipcert.graph import GraphNetwork, Residual, graph_network
from lipcert.network import Network
from lipcert.norm_pool import NormPool
from lipcert.norm_residual import NormResidual
from lipcert.operators import LinearOperator

from .graph import (
    Conversion,
    DenseBlock,
    Layer,
    block_operator,
    build_network,
    check_dense_size,
    dense_plan,
    materialize,
)

SUBTRACTIONS = frozenset({"Sub", "sub", "Tensor.sub", "Tensor.sub_", "isub"})
"""Merge op types that compute ``source - other``."""


def has_merges(conv: Conversion) -> bool:
    """True when the conversion is a graph: it holds a merge of two branches (a residual connection) or an
    L2-norm pooling stage."""
    return any(layer.other or layer.stage is not None for layer in conv.layers)


@dataclass(frozen=True)
class _Block:
    """One residual block of the layer graph: the merge, its shortcut path and its branch path."""

    merge: Layer
    shortcut: tuple[Layer, ...]
    branch: tuple[Layer, ...]
    shortcut_subtracted: bool
    branch_subtracted: bool
    shortcut_first: bool = False
    """For a concatenation: the shortcut's output is the first part of the joined tensor."""
    parallel: bool = False
    """A concatenation of two branches with activations (``shortcut`` then holds the first one)."""
    norm_eps: float | None = None
    """For an L2NormResidual merge sqrt(x^2/2 + g(x)^2/2 + eps): its eps (the shortcut is then empty)."""


Item = tuple[Layer, ...] | _Block | Activation | Layer
"""A run of chain layers, a residual block, an activation between stages, or an L2-norm pooling layer."""


def _refuse(conv: Conversion, layer: Layer, why: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(f"{conv.source}: {layer.op_type} node {layer.name!r}: {why}")


def _readers(layers: tuple[Layer, ...]) -> dict[str, list[Layer]]:
    out: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in (layer.source, layer.other):
            if name:
                out.setdefault(name, []).append(layer)
    return out


def _path(conv: Conversion, readers: dict[str, list[Layer]], first: Layer, fork: str) -> tuple[list[Layer], Layer]:
    """The layers from ``first`` up to (not including) the merge they lead to, and that merge."""
    path: list[Layer] = []
    layer = first
    while not layer.other:
        path.append(layer)
        nxt = readers.get(layer.target, [])
        if len(nxt) != 1:
            why = ("its output is read by several layers inside a residual branch (nested branches are not supported)"
                   if nxt else f"the branch from {fork!r} ends without merging back")
            raise _refuse(conv, layer, why)
        layer = nxt[0]
    return path, layer


def _block(conv: Conversion, readers: dict[str, list[Layer]], fork: str) -> _Block:
    users = readers[fork]
    merges = [u for u in users if u.other]
    if len(users) != 2 or len(merges) > 1 or (merges and {merges[0].source, merges[0].other} == {fork}):
        names = ", ".join(f"{u.op_type} {u.name!r}" for u in users)
        raise UnsupportedOperatorError(f"{conv.source}: tensor {fork!r} is read by {names}: lipcert handles a fork "
                                       "into exactly two paths that merge again by Add, Sub or Concat (a residual "
                                       "block or a concatenation)")
    paths = []
    for user in users:
        paths.append(([], user) if user.other else _path(conv, readers, user, fork))
    (p1, m1), (p2, m2) = paths
    if m1 is not m2:
        raise _refuse(conv, m1, f"the two paths from {fork!r} merge in different places ({m1.name!r} and "
                                f"{m2.name!r}); lipcert handles residual blocks whose two paths meet once")
    merge = m1
    ends = [p[-1].target if p else fork for p in (p1, p2)]
    if set(ends) != {merge.source, merge.other}:
        raise _refuse(conv, merge, "internal error: the merge does not read the ends of the two paths")
    pooled = next((layer for layer in p1 + p2 if layer.stage is not None), None)
    if pooled is not None:
        raise _refuse(conv, pooled, f"an L2-norm pooling inside the residual block from {fork!r} is not supported: "
                                    "a pooling is a stage of its own, and a residual branch must be a chain")
    acts = [any(layer.activation is not None for layer in p) for p in (p1, p2)]
    if all(acts) and merge.axis is not None:  # [g_1(x); g_2(x)], g_1 the path to the merge's first input
        first, second = (p1, p2) if ends[0] == merge.source else (p2, p1)
        return _Block(merge, tuple(first), tuple(second), False, False, True, True)
    if all(acts):
        raise _refuse(conv, merge, "both of its inputs pass through activations; a residual block needs one linear "
                                   "shortcut (identity, 1x1 convolution, downsampling) beside the branch")
    # the shortcut is the path without activations (of two linear paths, the shorter one)
    short, branch = (p1, p2) if not acts[0] and (acts[1] or len(p1) <= len(p2)) else (p2, p1)
    if merge.merge_eps is not None:
        if short:
            raise _refuse(conv, merge, f"an L2NormResidual merge needs the tensor {fork!r} itself as one input, but "
                                       f"it reads it through {short[0].op_type} {short[0].name!r}")
        return _Block(merge, (), tuple(branch), False, False, norm_eps=merge.merge_eps)
    subtract = merge.op_type in SUBTRACTIONS
    short_end = short[-1].target if short else fork
    return _Block(merge, tuple(short), tuple(branch), subtract and short_end == merge.other,
                  subtract and short_end != merge.other, short_end == merge.source)


def _items(conv: Conversion) -> list[Item]:
    """The model as chains (layer runs), residual blocks and activations, from input to output."""
    readers = _readers(conv.layers)
    items: list[Item] = []
    run: list[Layer] = []
    tensor = conv.layers[0].source
    while True:
        users = readers.get(tensor, [])
        if not users:
            break
        if len(users) == 1 and users[0].stage is not None:
            items += [tuple(run), users[0]] if run else [users[0]]
            run = []
            tensor = users[0].target
            continue
        if len(users) == 1 and not users[0].other:
            run.append(users[0])
            tensor = users[0].target
            continue
        if len(users) == 1:
            raise _refuse(conv, users[0], f"it merges {tensor!r} with a tensor that does not branch off it")
        if run:
            items.append(tuple(run))
            run = []
        block = _block(conv, readers, tensor)
        items.append(block)
        tensor = block.merge.target
    if run:
        items.append(tuple(run))
    return _split_activations(items)


def _split_activations(items: list[Item]) -> list[Item]:
    """Activations at the ends of a run next to a block become activations between stages."""
    out: list[Item] = []
    for k, item in enumerate(items):
        if not isinstance(item, tuple):
            out.append(item)
            continue
        run = list(item)
        head: Activation | None = None
        tail: Activation | None = None
        if k > 0 and run and run[0].activation is not None:
            head = run.pop(0).activation
        if k + 1 < len(items) and run and run[-1].activation is not None:
            tail = run.pop().activation
        out += ([head] if head is not None else []) + ([tuple(run)] if run else []) + ([tail] if tail else [])
    return out


def _sub(conv: Conversion, layers: tuple[Layer, ...]) -> Conversion:
    shape = tuple(layers[0].in_shape)
    return replace(conv, layers=layers, sample_shape=shape, input_shape=(math.prod(shape),), issues=())


def _chain(conv: Conversion, layers: tuple[Layer, ...], limit: int, negate: bool = False,
           operators: bool = False) -> Network:
    net = build_network(_sub(conv, layers), max_dense_bytes=limit, operators=operators)
    if not negate:
        return net
    if net.operators and net.operators[-1] is not None:  # a convolution last: its kernel negated
        last = net.operators[-1]
        specs = [w if op is None else op for w, op in zip(net.weights[:-1], net.operators[:-1])]
        return Network.from_weights(specs + [replace(last, kernel=-last.kernel)],
                                    list(net.biases[:-1]) + [-net.biases[-1]], list(net.activations))
    return net.with_last_layer(-net.weights[-1], -net.biases[-1])


def _shortcut_block(block: _Block) -> DenseBlock:
    return DenseBlock(block.shortcut, tuple(block.shortcut[0].in_shape), tuple(block.shortcut[-1].out_shape), None)


def _shortcut_operator(block: _Block) -> tuple[LinearOperator, torch.Tensor] | None:
    """A shortcut that is one convolution (per-channel scalings folded in, as in chains) as a
    :class:`~lipcert.operators.Conv2dOperator` and its bias; None if it is not one (docs/decisions.md 51)."""
    op = block_operator(_shortcut_block(block)) if block.shortcut else None
    if op is None:
        return None
    with torch.no_grad():
        x = torch.zeros(block.shortcut[0].in_shape, dtype=torch.float64)
        for layer in block.shortcut:
            assert layer.fn is not None
            x = layer.fn(x, True)
    sign = -1.0 if block.shortcut_subtracted else 1.0
    return replace(op, kernel=sign * op.kernel), sign * x.reshape(-1)


def _shortcut(layers: tuple[Layer, ...], negate: bool, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    sign = -1.0 if negate else 1.0
    if not layers:
        return (None, None) if not negate else (-torch.eye(n, dtype=torch.float64), None)
    w, b = materialize(DenseBlock(layers, tuple(layers[0].in_shape), tuple(layers[-1].out_shape), None))
    return sign * w, sign * b


def build_graph(conv: Conversion, *, max_dense_bytes: int, input_range: tuple[float, float] | None = None,
                info: dict[str, Any] | None = None, operators: bool = False) -> Network | GraphNetwork:
    """The :class:`~lipcert.graph.GraphNetwork` of a conversion with merges (a Network if it is a chain).

    With ``operators``, convolutions stay operators in chains, branches and shortcuts (as
    :func:`~.graph.build_network` keeps them in chains; docs/decisions.md 51).  The dense matrices of
    every chain and shortcut are counted against ``max_dense_bytes`` before any is built (ModelLoadError
    above it).
    """
    conv.raise_issues()
    items = _items(conv)
    runs = [it for it in items if isinstance(it, tuple)] + [p for it in items if isinstance(it, _Block)
                                                          for p in ((it.branch, it.shortcut) if it.parallel
                                                                    else (it.branch,)) if p]
    blocks = [b for run in runs for b in dense_plan(_sub(conv, run))]
    blocks += [_shortcut_block(it) for it in items if isinstance(it, _Block) and it.shortcut and not it.parallel]
    check_dense_size([b for b in blocks if not operators or block_operator(b) is None], max_dense_bytes, conv.source)
    stages: list[Network | Residual | NormPool | NormResidual] = []
    acts: list[Activation | None] = []
    pending: Activation | None = None  # the activation since the last stage
    for item in items:
        if isinstance(item, Activation) and stages and pending is None:
            pending = item
            continue
        if isinstance(item, Activation):  # two in a row: the second is carried by an identity chain
            stage: Network | Residual | NormPool | NormResidual = _identity(stages[-1].output_dim, item)
        elif isinstance(item, Layer):
            assert item.stage is not None
            stage = item.stage
        elif isinstance(item, tuple):
            stage = _chain(conv, item, max_dense_bytes, operators=operators)
        elif item.norm_eps is not None:
            stage = NormResidual(_chain(conv, item.branch, max_dense_bytes), item.norm_eps)
        elif item.parallel:
            stage = _parallel(conv, item, max_dense_bytes)
        elif item.merge.axis is not None:  # a concatenation's parts are placed by dense matrices
            branch = _chain(conv, item.branch, max_dense_bytes, negate=item.branch_subtracted)
            stage = _concat(item, branch, *_shortcut(item.shortcut, item.shortcut_subtracted, branch.input_dim))
        else:
            branch = _chain(conv, item.branch, max_dense_bytes, negate=item.branch_subtracted, operators=operators)
            kept = _shortcut_operator(item) if operators else None
            s, c = kept or _shortcut(item.shortcut, item.shortcut_subtracted, branch.output_dim)
            stage = Residual(branch, s, c)
        if stages:
            acts.append(pending)
        pending = None
        stages.append(stage)
    if pending is not None:  # the model ends with an activation after a block
        acts.append(pending)
        stages.append(_identity(stages[-1].output_dim))
    return graph_network(stages, acts, input_shape=conv.input_shape, input_range=input_range, info=info)


def _placements(merge: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions, in the joined tensor, of the entries of a concatenation's first and second parts."""
    axis, out = merge.axis, merge.out_shape
    assert axis is not None
    first = merge.in_shape[axis]
    index = torch.arange(math.prod(out)).reshape(out)
    return (index.narrow(axis, 0, first).reshape(-1), index.narrow(axis, first, out[axis] - first).reshape(-1))


def _placed(rows: torch.Tensor, matrix: torch.Tensor, n: int) -> torch.Tensor:
    """The matrix (or vector) with its rows moved to positions ``rows`` of n rows, zeros elsewhere: E M."""
    out = matrix.new_zeros((n, *matrix.shape[1:]))
    out[rows] = matrix
    return out


def _concat(item: _Block, branch: Network, s: torch.Tensor | None, c: torch.Tensor | None) -> Residual:
    """[S x + c; g(x)] (or [g(x); S x + c]) as the residual block E_s (S x + c) + E_g g(x) (decisions 47)."""
    first, second = _placements(item.merge)
    at_s, at_g = (first, second) if item.shortcut_first else (second, first)
    n = math.prod(item.merge.out_shape)
    s_mat = torch.eye(branch.input_dim, dtype=torch.float64) if s is None else s
    shortcut_bias = None if c is None else _placed(at_s, c, n)
    g = branch.with_last_layer(_placed(at_g, branch.weights[-1], n), _placed(at_g, branch.biases[-1], n))
    return Residual(g, _placed(at_s, s_mat, n), shortcut_bias)


def _parallel(conv: Conversion, item: _Block, limit: int) -> Network:
    """[g_1(x); g_2(x)] of two chains of equal depth and activations as one chain (decisions 47): the first
    weights stacked, the later ones block-diagonal, the last ones placed by the concatenation."""
    g1, g2 = (_chain(conv, path, limit) for path in (item.shortcut, item.branch))
    same = g1.depth == g2.depth and all(a == b and a.mask is None for a, b in zip(g1.activations, g2.activations))
    if not same:
        raise _refuse(conv, item.merge, "it joins two branches with activations of different structure ("
                                        f"{_structure(g1)} and {_structure(g2)}); lipcert joins such branches when "
                                        "they have the same depth and the same activation at each layer")
    n = math.prod(item.merge.out_shape)
    first, second = _placements(item.merge)
    weights = [torch.cat([g1.weights[0], g2.weights[0]])]
    weights += [torch.block_diag(w1, w2) for w1, w2 in zip(g1.weights[1:-1], g2.weights[1:-1])]
    weights.append(torch.cat([_placed(first, g1.weights[-1], n), _placed(second, g2.weights[-1], n)], 1))
    biases = [torch.cat([b1, b2]) for b1, b2 in zip(g1.biases[:-1], g2.biases[:-1])]
    biases.append(_placed(first, g1.biases[-1], n) + _placed(second, g2.biases[-1], n))
    return Network.from_weights(weights, biases, list(g1.activations))


def _structure(net: Network) -> str:
    return f"{net.depth} layers, activations {', '.join(net.activation_names) or 'none'}"


def _identity(n: int, activation: Activation | None = None) -> Network:
    """The identity map on n entries as a chain; with an activation, that activation alone (I, phi, I)."""
    eye = torch.eye(n, dtype=torch.float64)
    return Network.from_weights([eye] if activation is None else [eye, eye], None, [] if activation is None
                                else [activation])
