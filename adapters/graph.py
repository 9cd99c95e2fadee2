"""The converted model before it becomes a :class:`~lipcert.Network`: a chain of layers.

Both adapters (torch, ONNX) turn a model into a :class:`Conversion`: the chain of
:class:`Layer` objects from the input to the output, each either an *affine* map given as a
torch function or an elementwise *activation* with its slope bounds, plus every
:class:`Issue` (operator that is neither).  This module groups the consecutive affine layers
between two activations and materializes each group as one dense float64 matrix, in PyTorch
flatten order, by applying the group to the identity (math.md section 7(iv)).

Shapes of layers are *per-sample* shapes as the model sees them: an ONNX model with a batch
axis and every torch module see one sample as a tensor with a leading batch axis of size 1.
Affine functions act on one such tensor; batches of them are evaluated with ``torch.vmap``,
so shape computations inside a model (``x.view(x.size(0), -1)``) stay per-sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lipcert.activations import Activation
from lipcert.errors import ModelLoadError, UnsupportedOperatorError
from lipcert.network import Network
from lipcert.norm_pool import NormPool
from lipcert.operators import LinearOperator

AffineFn = Callable[[torch.Tensor, bool], torch.Tensor]
"""``fn(x, with_bias)``: the affine map (``True``) or its linear part (``False``) on one sample."""

DEFAULT_MAX_DENSE_BYTES = 4 * 10**9
"""Default limit on the total size of the dense float64 weight matrices (4 GB)."""

_CHUNK_ELEMENTS = 2**22  # float64 entries per vmap chunk when applying a group to the identity
# (32 MB; a convolution's unfolded input is ~kernel-size times larger, so this bounds the peak
# beyond the dense matrix itself to a few hundred MB; measured in benchmarks/results/speed.md)


class NotCovered(Exception):
    """An operator is not an affine map of its input nor a known activation; ``args[0]`` says why."""


@dataclass(frozen=True)
class AffineOp:
    """An affine map of one sample, as returned by the operator handlers."""

    fn: AffineFn
    params: int = 0
    detail: str = ""
    module: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    """An equivalent torch module on batches (any batch size), kept where the structure matters to
    other tools (a convolution stays a convolution when the chain is rebuilt for a verifier)."""
    operator: LinearOperator | None = field(default=None, repr=False, compare=False)
    """The linear part as an operator (a 2-D convolution), for networks that keep it (decisions.md 21)."""


@dataclass(frozen=True)
class PoolOp:
    """An L2-norm pooling of one sample (a stage of a network graph, decisions 43), as a handler returns it."""

    pool: NormPool
    out_shape: tuple[int, ...]
    detail: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool.forward_flat(x.reshape(1, -1)).reshape(self.out_shape)


Op = AffineOp | Activation | PoolOp
DYNAMIC = object()
"""Marks the argument computed from the model input among an operator's constant arguments."""


@dataclass(frozen=True)
class Layer:
    """One converted operator of the model.

    Attributes
    ----------
    name : str
        Node name (ONNX) or module path / fx node name (torch).
    op_type : str
        ONNX operator type or torch module / function name.
    source, target : str
        Names of the tensor this layer reads and the tensor it writes (for chaining).
    in_shape, out_shape : tuple of int
        Per-sample shapes (see the module docstring).
    fn : callable or None
        For an affine layer, ``fn(x, with_bias)``.
    activation : Activation or None
        For an activation layer, the elementwise activation and its slopes.
    params : int
        Number of stored parameters of the operator.
    detail : str
        Human-readable attributes (kernel, stride, ...), shown by ``lipcert inspect``.
    module : torch.nn.Module or None
        For an affine layer, an equivalent float64 torch module on batches, when the handler gives one.
    other : str
        For a merge of two branches (``source + other``, or ``source - other`` when ``op_type`` is a
        subtraction), the second tensor read; empty for every other layer (adapters/residual.py).
    stage : NormPool or None
        For an L2-norm pooling, the stage it is in the network graph (on flat vectors).
    merge_eps : float or None
        For the merge of orthogonium's L2NormResidual, sqrt(source^2 / 2 + other^2 / 2 + eps), its eps.
    axis : int or None
        For a Concat merge, the axis of the per-sample shapes along which ``source`` then ``other`` are
        joined; None for every other layer (an Add or Sub merge among them).
    """

    name: str
    op_type: str
    source: str
    target: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    fn: AffineFn | None = field(default=None, repr=False, compare=False)
    activation: Activation | None = None
    params: int = 0
    detail: str = ""
    module: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    operator: LinearOperator | None = field(default=None, repr=False, compare=False)
    other: str = ""
    stage: NormPool | None = field(default=None, repr=False, compare=False)
    merge_eps: float | None = None
    axis: int | None = None

    @property
    def kind(self) -> str:
        return ("activation" if self.activation is not None else "l2residual" if self.merge_eps is not None else
                "merge" if self.other else "l2pool" if self.stage is not None else "affine")


@dataclass(frozen=True)
class Issue:
    """An operator outside the chain of affine maps and elementwise slope-restricted activations."""

    name: str
    op_type: str
    why: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}: {self.why}"


@dataclass(frozen=True)
class Conversion:
    """A model read by an adapter: its layer chain, or the reasons it is not a chain.

    Attributes
    ----------
    source : str
        Path or description of the model.
    format : str
        ``"onnx"`` or ``"torch"``.
    input_name : str
        Name of the model's input tensor.
    sample_shape : tuple of int
        Shape of one sample as the first layer sees it (with the model's batch axis of 1).
    input_shape : tuple of int
        Shape of one input without the batch axis (the Network's ``input_shape``).
    layers : list of Layer
        The chain from input to output (when ``issues`` is empty); otherwise every layer that
        could be converted, in graph order.
    issues : list of Issue
        Every unsupported operator found.
    notes : list of str
        Remarks about the conversion (fused activations, layout, ...).
    channels_last : bool
        The model starts by moving its last input axis to the channel axis (NHWC input).
    """

    source: str
    format: str
    input_name: str
    sample_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    issues: tuple[Issue, ...] = ()
    notes: tuple[str, ...] = ()
    channels_last: bool = False

    @property
    def has_batch_axis(self) -> bool:
        return len(self.sample_shape) == len(self.input_shape) + 1

    def display_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` without the model's batch axis of 1, for printing."""
        if self.has_batch_axis and len(shape) > 0 and shape[0] == 1:
            return tuple(shape[1:])
        return tuple(shape)

    def raise_issues(self) -> None:
        """Raise :class:`UnsupportedOperatorError` listing every issue, if there is any."""
        if not self.issues:
            return
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        count = len(self.issues)
        raise UnsupportedOperatorError(
            f"{self.source}: {count} operator{'s' if count > 1 else ''} outside the chain of affine maps and "
            f"elementwise slope-restricted activations that lipcert bounds:\n{lines}")

    def with_first_layer(self, layer: Layer) -> Conversion:
        """The same conversion with ``layer`` applied before every other layer."""
        return replace(self, layers=(layer,) + self.layers)


@dataclass(frozen=True)
class DenseBlock:
    """Consecutive affine layers that become one dense matrix, and the activation after them."""

    layers: tuple[Layer, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation: Layer | None

    @property
    def rows(self) -> int:
        return math.prod(self.out_shape)

    @property
    def cols(self) -> int:
        return math.prod(self.in_shape)

    @property
    def nbytes(self) -> int:
        return 8 * self.rows * self.cols

    @property
    def label(self) -> str:
        if not self.layers:
            return "(identity)"
        if len(self.layers) == 1:
            return self.layers[0].name
        return f"{self.layers[0].name} .. {self.layers[-1].name}"


def undilate(weight: torch.Tensor, dilation: Sequence[int] | int) -> torch.Tensor:
    """The kernel with ``dilation - 1`` zeros inserted between taps (then used with dilation 1).

    The same convolution exactly (the inserted terms are 0 * x), but torch's float64 CPU path
    for dilated convolutions is up to 100x slower than for plain ones.
    """
    n = weight.ndim - 2
    dil = [dilation] * n if isinstance(dilation, int) else list(dilation)
    if all(d == 1 for d in dil):
        return weight
    size = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dil)]
    out = weight.new_zeros(*weight.shape[:2], *size)
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dil)] = weight
    return out


def make_layers(name: str, op_type: str, source: str, target: str, ops: Sequence[Op], probe: torch.Tensor
                ) -> tuple[list[Layer], torch.Tensor]:
    """Layers for the operations of one operator, chained ``source`` -> ``target``, and the probe output.

    Raises NotCovered if an operation fails or gives non-finite values on the probe sample.
    """
    layers: list[Layer] = []
    x, cur = probe, source
    if not ops:  # an identity keeps the chain connected
        ops = [AffineOp(lambda t, _b: t, 0, "identity")]
    for k, op in enumerate(ops):
        out_name = target if k == len(ops) - 1 else f"{target}#{k}"
        label = name if len(ops) == 1 else f"{name} [{k + 1}/{len(ops)}]"
        with torch.no_grad():
            y = op(x) if isinstance(op, Activation | PoolOp) else op.fn(x, True)
        if not isinstance(y, torch.Tensor):
            raise NotCovered(f"returns {type(y).__name__}, not a tensor")
        if not torch.isfinite(y).all():
            raise NotCovered("it produces non-finite values on a sample input")
        if isinstance(op, Activation):
            layers.append(Layer(label, op_type, cur, out_name, tuple(x.shape), tuple(y.shape), activation=op))
        elif isinstance(op, PoolOp):
            layers.append(Layer(label, op_type, cur, out_name, tuple(x.shape), tuple(y.shape), detail=op.detail,
                                stage=op.pool))
        else:
            layers.append(Layer(label, op_type, cur, out_name, tuple(x.shape), tuple(y.shape), fn=op.fn,
                                params=op.params, detail=op.detail, module=op.module, operator=op.operator))
        x, cur = y, out_name
    return layers, x


def chain_between(layers: Sequence[Layer], source: str, target: str) -> list[Layer] | None:
    """The layers leading from tensor ``source`` to tensor ``target``, or None if not connected."""
    producer = {layer.target: layer for layer in layers}
    out: list[Layer] = []
    name = target
    while name != source:
        layer = producer.get(name)
        if layer is None or len(out) > len(layers):
            return None
        out.append(layer)
        name = layer.source
    return out[::-1]


def reaching(layers: Sequence[Layer], target: str) -> list[Layer] | None:
    """The layers that tensor ``target`` depends on (through both inputs of merges), in their order; None if
    no layer produces it."""
    producer = {layer.target: layer for layer in layers}
    if target not in producer:
        return None
    needed, todo = set(), [target]
    while todo:
        layer = producer.get(todo.pop())
        if layer is not None and id(layer) not in needed:
            needed.add(id(layer))
            todo += [name for name in (layer.source, layer.other) if name]
    return [layer for layer in layers if id(layer) in needed]


def dense_plan(conv: Conversion) -> list[DenseBlock]:
    """Group the chain into dense blocks: affine layers, then (except for the last) an activation.

    Two activations in a row, or an activation first or last, get an identity block between.
    """
    blocks: list[DenseBlock] = []
    current: list[Layer] = []
    shape = conv.sample_shape
    start = shape
    for layer in conv.layers:
        if tuple(layer.in_shape) != tuple(shape):
            raise ModelLoadError(f"internal error: layer {layer.name!r} expects shape {layer.in_shape} "
                                 f"but receives {shape}")
        if layer.stage is not None:
            raise ModelLoadError(f"internal error: the L2-norm pooling {layer.name!r} is a stage of a network graph, "
                                 "not part of a chain (adapters/residual.py builds it)")
        if layer.activation is not None:
            blocks.append(DenseBlock(tuple(current), start, shape, layer))
            current, start = [], layer.out_shape
        else:
            current.append(layer)
        shape = layer.out_shape
    blocks.append(DenseBlock(tuple(current), start, shape, None))
    return blocks


def check_dense_size(blocks: Sequence[DenseBlock], max_dense_bytes: int, source: str) -> None:
    """Raise :class:`ModelLoadError` before materializing more than ``max_dense_bytes``."""
    total = sum(b.nbytes for b in blocks)
    if total <= max_dense_bytes:
        return
    big = max(blocks, key=lambda b: b.nbytes)
    raise ModelLoadError(
        f"{source}: the dense weight matrices would need about {_gb(total)} of memory (largest: "
        f"{big.label}, {big.rows} x {big.cols} = {_gb(big.nbytes)}), over the limit of {_gb(max_dense_bytes)}. "
        "Bounds need each layer as an explicit dense matrix; raise the limit with "
        f"max_dense_bytes={_next_limit(total)} (CLI: --max-dense-gb {math.ceil(total / 1e9)}) if the machine "
        "has the memory, or use a smaller model")


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def _next_limit(nbytes: int) -> str:
    return f"{math.ceil(nbytes / 1e9)}e9"


def materialize(block: DenseBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense matrix W (rows x cols) and bias b of one block, W x + b = block(x) in flatten order."""
    rows, cols = block.rows, block.cols
    if not block.layers:
        return torch.eye(cols, dtype=torch.float64), torch.zeros(cols, dtype=torch.float64)

    fns = [layer.fn for layer in block.layers if layer.fn is not None]

    def apply(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        for fn in fns:
            x = fn(x, with_bias)
        return x

    with torch.no_grad():
        bias = apply(torch.zeros(block.in_shape, dtype=torch.float64), True).reshape(-1)
        widest = max([cols] + [math.prod(layer.out_shape) for layer in block.layers])
        chunk = max(1, min(cols, _CHUNK_ELEMENTS // widest))
        linear = torch.vmap(lambda t: apply(t, False))
        weight = torch.empty(rows, cols, dtype=torch.float64)
        for i0 in range(0, cols, chunk):
            i1 = min(cols, i0 + chunk)
            eye = torch.zeros(i1 - i0, cols, dtype=torch.float64)
            eye[torch.arange(i1 - i0), torch.arange(i0, i1)] = 1.0
            out = linear(eye.reshape(i1 - i0, *block.in_shape))
            weight[:, i0:i1] = out.reshape(i1 - i0, rows).T
            del eye, out  # free this chunk's buffers before the next chunk allocates its own
    if bias.shape != (rows,):
        raise ModelLoadError(f"internal error: block {block.label} produced {tuple(bias.shape)} outputs, "
                             f"expected {rows}")
    return weight, bias


def block_operator(block: DenseBlock) -> LinearOperator | None:
    """The operator of a block whose linear part is one convolution, else None.

    Per-channel scalings before it (the input normalization) and after it (an eval BatchNorm) are
    folded into its kernel: K'[o, c] = d_out[o] K[o, c] d_in[c].  A layer counts as a per-channel
    scaling when its linear part maps ones to a per-channel constant d and a random probe z to d z;
    the load's conversion check compares the folded network with the model.
    """
    found = [i for i, layer in enumerate(block.layers) if layer.operator is not None]
    if len(found) != 1 or any(layer.fn is None for layer in block.layers):
        return None
    i = found[0]
    op = block.layers[i].operator
    assert op is not None
    if i == 0 and len(block.layers) == 1:
        return op
    if op.adjoint:
        return None
    d_in = _channel_scale(block.layers[:i], op.in_shape)
    d_out = _channel_scale(block.layers[i + 1:], op.conv_out_shape)
    if d_in is None or d_out is None:
        return None
    g = op.groups
    k = op.kernel.reshape(g, -1, *op.kernel.shape[1:]) * d_in.reshape(g, 1, -1, 1, 1)
    return replace(op, kernel=k.reshape(op.kernel.shape) * d_out.reshape(-1, 1, 1, 1))


def _channel_scale(layers: Sequence[Layer], shape: tuple[int, int, int]) -> torch.Tensor | None:
    """d (one per channel) if the linear part of ``layers`` on (1, *shape) is x -> d x per channel, else None."""
    if not layers:
        return torch.ones(shape[0], dtype=torch.float64)
    if any(tuple(layer.in_shape) != (1, *shape) or tuple(layer.out_shape) != (1, *shape) for layer in layers):
        return None

    def linear(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            assert layer.fn is not None
            x = layer.fn(x, False)
        return x

    with torch.no_grad():
        ones = linear(torch.ones(1, *shape, dtype=torch.float64))[0]
        d = ones.reshape(shape[0], -1)[:, 0]
        probe = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        expected = probe * d.reshape(1, -1, 1, 1)
        if not (torch.allclose(ones, d.reshape(-1, 1, 1).expand(shape), rtol=1e-12, atol=0)
                and torch.allclose(linear(probe), expected, rtol=1e-12, atol=1e-300)):
            return None
    return d


def build_network(conv: Conversion, *, max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
                  input_range: tuple[float, float] | None = None, info: dict[str, Any] | None = None,
                  operators: bool = False) -> Network:
    """Materialize the chain as a :class:`Network` (after checking the dense size).

    With ``operators``, a block that is a single convolution stays a
    :class:`~lipcert.operators.Conv2dOperator` (its bias is still computed) and counts nothing
    toward ``max_dense_bytes``.
    """
    conv.raise_issues()
    blocks = dense_plan(conv)
    kept = [block_operator(b) if operators else None for b in blocks]
    check_dense_size([b for b, op in zip(blocks, kept) if op is None], max_dense_bytes, conv.source)
    weights: list[torch.Tensor | LinearOperator] = []
    biases, acts = [], []
    for block, op in zip(blocks, kept):
        w: torch.Tensor | LinearOperator
        if op is not None:
            with torch.no_grad():
                x = torch.zeros(block.in_shape, dtype=torch.float64)
                for layer in block.layers:
                    assert layer.fn is not None
                    x = layer.fn(x, True)
                w, b = op, x.reshape(-1)
        else:
            w, b = materialize(block)
        weights.append(w)
        biases.append(b)
        if block.activation is not None and block.activation.activation is not None:
            acts.append(block.activation.activation)
    return Network.from_weights(weights, biases, acts, input_shape=conv.input_shape, input_range=input_range,
                                info=info)
